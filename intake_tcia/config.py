"""Settings: defaults, environment variables and host routing, read once when a client is made."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "Settings",
    "DEFAULT_API_URL",
    "DEFAULT_NLST_API_URL",
    "NLST_COLLECTION",
    "SECRETS",
    "BACKENDS",
    "DEFAULT_IDC_URL",
    "IDC_INDEX_RELEASES",
    "GCS_IDC_URL",
    "IDC_MIRRORS",
    "is_nlst",
]

DEFAULT_API_URL = "https://nbia.cancerimagingarchive.net/nbia-api/services/v4/"
DEFAULT_NLST_API_URL = "https://nlst.cancerimagingarchive.net/nbia-api/services/v4/"
NLST_COLLECTION = "NLST"

_ENVIRONMENT = {
    "api_url": "INTAKE_TCIA_API_URL",
    "nlst_api_url": "INTAKE_TCIA_NLST_API_URL",
    "cache_dir": "INTAKE_TCIA_CACHE_DIR",
    "datacite_url": "INTAKE_TCIA_DATACITE_URL",
    "api_version": "INTAKE_TCIA_API_VERSION",
    "api_key": "INTAKE_TCIA_API_KEY",
    "username": "INTAKE_TCIA_USERNAME",
    "password": "INTAKE_TCIA_PASSWORD",
    "nlst_username": "INTAKE_TCIA_NLST_USERNAME",
    "nlst_password": "INTAKE_TCIA_NLST_PASSWORD",
    "backend": "INTAKE_TCIA_BACKEND",
    "idc_url": "INTAKE_TCIA_IDC_URL",
    "idc_index": "INTAKE_TCIA_IDC_INDEX",
    "idc_index_url": "INTAKE_TCIA_IDC_INDEX_URL",
    "idc_mirror": "INTAKE_TCIA_IDC_MIRROR",
    "idc_version": "INTAKE_TCIA_IDC_VERSION",
}
#: Numeric settings read from the environment too: the bounds on what servers send.
_NUMERIC_ENVIRONMENT = {
    "max_answer_bytes": ("INTAKE_TCIA_MAX_ANSWER_BYTES", int),
    "max_header_bytes": ("INTAKE_TCIA_MAX_HEADER_BYTES", int),
    "max_decompression_ratio": ("INTAKE_TCIA_MAX_DECOMPRESSION_RATIO", float),
    "min_transfer_rate": ("INTAKE_TCIA_MIN_TRANSFER_RATE", float),
    "idc_max_objects": ("INTAKE_TCIA_IDC_MAX_OBJECTS", int),
    "idc_max_listing_page_bytes": ("INTAKE_TCIA_IDC_MAX_LISTING_PAGE_BYTES", int),
    "idc_size_factor": ("INTAKE_TCIA_IDC_SIZE_FACTOR", float),
}
#: Settings that are secrets: never in repr, str, logs or pickles (re-read from the environment).
SECRETS = ("api_key", "username", "password", "nlst_username", "nlst_password")
_URLS = ("api_url", "nlst_api_url", "datacite_url", "idc_url")
#: Where data comes from (design.md, "Two backends").
BACKENDS = ("nbia", "idc", "auto")
DEFAULT_IDC_URL = "https://s3.amazonaws.com/"
#: Where idc-index fetches the supplementary indices of an idc-index-data version from.
IDC_INDEX_RELEASES = "https://github.com/ImagingDataCommons/idc-index-data/releases/download/"
#: The endpoint of IDC's Google Cloud Storage mirror (S3-compatible, anonymous).
GCS_IDC_URL = "https://storage.googleapis.com/"
#: The copies of IDC's buckets: Amazon's (the default) and Google's.
IDC_MIRRORS = ("aws", "gcs")
_POSITIVE = ("connect_timeout", "read_timeout", "query_timeout", "series_timeout")


#: The dialects of the NBIA API (``api_version``), as :mod:`intake_tcia.nbia.flavours` names them.
API_VERSIONS = ("v4", "token", "v1", "v2", "legacy")

def is_nlst(collection: str | None) -> bool:
    """bool: True when ``collection`` is NLST, which lives on its own host (case-insensitive)."""
    return collection is not None and collection.strip().upper() == NLST_COLLECTION


def _default_cache_dir() -> Path:
    import platformdirs  # only where no cache_dir is given

    return Path(platformdirs.user_cache_dir("intake-tcia", appauthor=False))


def _default_idc_index_url() -> str | None:
    """The release folder of the installed idc-index-data version (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{IDC_INDEX_RELEASES}{version('idc-index-data')}/"
    except PackageNotFoundError:
        return None


def _base_url(name: str, url: Any) -> str:
    """``url`` ending in ``/``; ValueError unless it is an http(s) URL with a host."""
    text = str(url)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{name} must be an http:// or https:// URL with a host name, not {text[:200]!r}"
        )
    return text if text.endswith("/") else text + "/"


def _release(value: Any) -> int:
    """An IDC release number (``21``, ``"21"``, ``"v21"``) as an int >= 1, else ValueError."""
    text = str(value).strip().lower().removeprefix("v")
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"idc_version must be an IDC release number such as 21, not {value!r}")
    return int(text)


def _check_secret(name: str, value: str | None) -> str | None:
    """A secret as it can be sent in a header or form, or ValueError (never showing it)."""
    if value is None:
        return None
    value = str(value)
    if name == "api_key":
        value = value.strip()  # a key read from a file keeps its newline
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"{name} holds a line break or another control character (not shown)")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything a client needs to know, from keywords, then environment, then defaults.

    Parameters
    ----------
    api_url, nlst_api_url : str
        Base URLs of the main NBIA v4 API and of the NLST host (ending in ``/``).
    cache_dir : Path
        Where verified series are kept.
    connect_timeout, read_timeout : float
        Seconds to wait for a connection, and between two bytes of an answer.
    query_timeout : float
        Seconds a whole metadata answer may take, headers and body (an endless or trickled
        answer is cut off after this).
    series_timeout : float
        Seconds the download of one series may take in all, retries included.
    max_answer_bytes : int
        Bytes a metadata answer may hold, as sent and as parsed into columns (default 1 GiB;
        getSeries of 150,000 NLST series is about 116 MB, and holds less once parsed).
    max_header_bytes : int
        Bytes a ranged read of an object's first bytes (its DICOM header) may grow to (default
        16 MiB: real headers, large private elements included, hold far less).
    max_decompression_ratio : float
        The most an answer sent compressed (``Content-Encoding``) may inflate, once past 1 MiB
        (default 200; deflate's own limit is about 1032).
    min_transfer_rate : float
        Bytes per second below which an IDC series is given up: its deadline is ``read_timeout``
        plus its listed bytes at this rate (default 64 kB/s), at most ``series_timeout``.
    idc_max_objects : int
        The most objects one IDC series listing may hold (default 100,000; fewer where the
        index gives ``instanceCount``).
    idc_max_listing_page_bytes : int
        Bytes one ListObjectsV2 page may hold, parsed as it arrives (default 16 MiB; a page of
        1,000 keys is about 350 kB).
    idc_size_factor : float
        An IDC series' listed objects may hold at most this many times the index's
        ``series_size_MB``, plus 64 kB (default 2).
    retries : int
        How many times a request is retried on 429, 5xx and connection errors.
    backoff_factor, max_backoff : float
        Exponential backoff between retries, ``backoff_factor * 2**n`` seconds, capped at
        ``max_backoff`` (a server's Retry-After is honoured up to the same cap).
    workers : int
        How many series are downloaded at once.
    datacite_url : str
        Base URL of the DataCite REST API, for citations of collection DOIs.
    api_version : {"v4", "token", "v1", "v2", "legacy"}, optional
        The dialect of the API (:mod:`intake_tcia.nbia.flavours`); by default read from each
        base URL.
    api_key : str, optional
        The ``api_key`` header of the legacy TCIA REST API.
    username, password : str, optional
        An NBIA login for the ``api_url`` host, for deployments that want a token (default: the
        guest login ``nbia_guest`` with an empty password). Giving a username asks for tokens.
    nlst_username, nlst_password : str, optional
        The login for the NLST host. ``username``/``password`` are never sent there: without
        these the NLST host is asked with the guest login.
    backend : {"auto", "nbia", "idc"}
        Where data comes from: the NBIA API, the Imaging Data Commons (a local index and public
        buckets), or NBIA with IDC as the fallback and the faster path for series files.
    idc_url : str
        The S3-compatible endpoint of IDC's buckets (anonymous, path-style).
    idc_index : Path, optional
        A folder laid out like the ``idc-index-data`` package (``idc_index.parquet``,
        ``collections_index.parquet``); by default that installed package's folder.
    idc_index_url : str, optional
        The folder the supplementary indices are fetched from (``{idc_index_url}{name}.parquet``);
        by default idc-index-data's GitHub release folder for the installed version.
    idc_mirror : {"aws", "gcs"}
        Whose copy of IDC's buckets: Amazon's, or Google Cloud Storage's (its bucket names, and
        ``https://storage.googleapis.com/`` as ``idc_url`` unless one is given).
    idc_version : int, optional
        The IDC release to serve series as (an older one than the index's: each series as that
        release had it); by default the index's own release.

    Notes
    -----
    ``api_key``, ``username`` and ``password`` never appear in ``repr``, and are left out when
    settings are pickled: an unpickled client reads them from the environment again, or goes
    without.
    """

    api_url: str = DEFAULT_API_URL
    nlst_api_url: str = DEFAULT_NLST_API_URL
    cache_dir: Path = field(default_factory=_default_cache_dir)
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    query_timeout: float = 600.0
    series_timeout: float = 6 * 3600.0
    max_answer_bytes: int = 1 << 30
    max_header_bytes: int = 16 << 20
    max_decompression_ratio: float = 200.0
    min_transfer_rate: float = 65536.0
    idc_max_objects: int = 100_000
    idc_max_listing_page_bytes: int = 16 << 20
    idc_size_factor: float = 2.0
    retries: int = 5
    backoff_factor: float = 0.5
    max_backoff: float = 60.0
    workers: int = 4
    datacite_url: str = "https://api.datacite.org/"
    api_version: str | None = None
    api_key: str | None = field(default=None, repr=False)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    nlst_username: str | None = field(default=None, repr=False)
    nlst_password: str | None = field(default=None, repr=False)
    backend: str = "auto"
    idc_url: str = DEFAULT_IDC_URL
    idc_index: Path | None = None
    idc_index_url: str | None = None
    idc_mirror: str = "aws"
    idc_version: int | None = None

    def __post_init__(self) -> None:
        for name in _URLS:
            object.__setattr__(self, name, _base_url(name, getattr(self, name)))
        for name in SECRETS:
            object.__setattr__(self, name, _check_secret(name, getattr(self, name)))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())
        backend = str(self.backend).strip().lower()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        object.__setattr__(self, "backend", backend)
        if self.idc_index is not None:
            object.__setattr__(self, "idc_index", Path(self.idc_index).expanduser())
        url = self.idc_index_url if self.idc_index_url is not None else _default_idc_index_url()
        if url is not None:
            object.__setattr__(self, "idc_index_url", _base_url("idc_index_url", url))
        mirror = str(self.idc_mirror).strip().lower()
        if mirror not in IDC_MIRRORS:
            raise ValueError(
                f"idc_mirror must be one of {', '.join(IDC_MIRRORS)}, not {self.idc_mirror!r}")
        object.__setattr__(self, "idc_mirror", mirror)
        if self.idc_url in (DEFAULT_IDC_URL, GCS_IDC_URL):  # the default endpoint, or the other's
            object.__setattr__(self, "idc_url", GCS_IDC_URL if mirror == "gcs" else DEFAULT_IDC_URL)
        if self.idc_version is not None:
            object.__setattr__(self, "idc_version", _release(self.idc_version))
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, not {self.retries}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, not {self.workers}")
        for name in ("max_answer_bytes", "max_header_bytes", "idc_max_objects",
                     "idc_max_listing_page_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("max_decompression_ratio", "min_transfer_rate", "idc_size_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, not {value}")
        for name in _POSITIVE:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number of seconds > 0, not {value}")
        for name in ("backoff_factor", "max_backoff"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value}")
        if self.api_version is not None and self.api_version not in API_VERSIONS:
            raise ValueError(
                f"api_version must be one of {', '.join(API_VERSIONS)}, not {self.api_version!r}"
            )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, **dict.fromkeys(SECRETS)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def with_secrets_from_env(self) -> Settings:
        """A copy whose missing secrets are read from the environment (after unpickling)."""
        found = {
            name: os.environ[_ENVIRONMENT[name]]
            for name in SECRETS
            if getattr(self, name) is None and os.environ.get(_ENVIRONMENT[name])
        }
        return self.replace(**found) if found else self

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from keywords, else ``INTAKE_TCIA_*`` environment variables, else defaults.

        Keywords given as ``None`` count as not given. An unknown keyword raises ``TypeError``.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unexpected setting(s): {', '.join(unknown)}")
        values = {k: v for k, v in overrides.items() if v is not None}
        for name, variable in _ENVIRONMENT.items():
            if name not in values and os.environ.get(variable):
                values[name] = os.environ[variable]
        for name, (variable, kind) in _NUMERIC_ENVIRONMENT.items():
            if name not in values and os.environ.get(variable):
                try:
                    values[name] = kind(os.environ[variable])
                except ValueError:
                    raise ValueError(f"{variable} must be a number, not "
                                     f"{os.environ[variable][:40]!r}") from None
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed."""
        return replace(self, **changes)

    def host_for(self, collection: str | None) -> str:
        """str: the base URL that holds ``collection`` (NLST has its own host)."""
        return self.nlst_api_url if is_nlst(collection) else self.api_url

    @property
    def hosts(self) -> tuple[str, ...]:
        """tuple of str: every base URL, the main host first."""
        return (self.api_url, self.nlst_api_url)

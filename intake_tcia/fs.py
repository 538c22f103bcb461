"""The ``tcia://`` fsspec filesystem: the archive as folders of DICOM files.

Paths (``tcia://`` may be left off)::

    tcia://                                             collections (NLST included)
    tcia://{Collection}                                 patients
    tcia://{Collection}/{PatientID}                     studies
    tcia://{Collection}/{PatientID}/{StudyInstanceUID}  series
    tcia://{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm

Each directory level is one metadata query (getCollectionValues, getPatient, getPatientStudy,
getSeries, getSOPInstanceUIDs), kept in ``dircache``. Instance bytes come from the series cache
shared with the rest of the package; what is not there is fetched as the ``fetch`` option says,
and single instances are kept on disk too (``{cache_dir}/instances/{SeriesInstanceUID}/``), so
nothing is asked for twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.implementations.local import LocalFileOpener
from fsspec.spec import make_instance
from fsspec.utils import isfilelike, tokenize

from ._lazy import pandas as pd
from ._validate import validate_uid
from .client import TCIAClient
from .config import SECRETS, Settings
from .errors import TCIAIntegrityError, TCIANotFoundError
from .retrieval.cache import INSTANCES_DIR, CachedSeries

__all__ = ["TCIAFileSystem", "FETCH_POLICIES", "AUTO_SERIES_AFTER", "INSTANCES_DIR"]

log = logging.getLogger("intake_tcia")

#: Values of the ``fetch`` option.
FETCH_POLICIES = ("auto", "instance", "series")
#: With ``fetch="auto"``, a series is fetched whole once this many of its instances are on disk.
AUTO_SERIES_AFTER = 4

# What each part of a path names; _KEYS[depth] names the entries of a directory at that depth.
_NAMES = ("Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_KEYS = _NAMES[:-1]
_INSTANCE_DEPTH = 5
_CLIENT_OPTIONS = frozenset(
    [p.name for p in inspect.signature(TCIAClient).parameters.values() if p.kind is p.KEYWORD_ONLY]
    + [f.name for f in dataclasses.fields(Settings)]
)


def _missing(path: str, reason: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, reason, f"tcia://{path}")


def _split(path: str) -> list[str]:
    """Validated parts of a stripped path; an instance's part is its SOPInstanceUID."""
    parts = path.split("/") if path else []
    if len(parts) > _INSTANCE_DEPTH or "" in parts:
        raise _missing(path, "not a tcia path (Collection/PatientID/Study/Series/SOP.dcm)")
    if len(parts) == _INSTANCE_DEPTH:
        if not parts[4].endswith(".dcm"):
            raise _missing(path, "an instance's name is its SOPInstanceUID followed by '.dcm'")
        parts[4] = parts[4][: -len(".dcm")]
    for depth in range(2, len(parts)):
        try:
            validate_uid(parts[depth], _NAMES[depth])
        except ValueError as exc:
            raise _missing(path, str(exc)) from exc
    return parts


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A listing row without its missing values."""
    return {k: v for k, v in row.items() if not pd.isna(v)}


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """Re-raise the server's "not found" as a FileNotFoundError naming ``path``."""
    try:
        yield
    except TCIANotFoundError as exc:
        raise _missing(path, str(exc)) from exc


class TCIAFileSystem(AbstractFileSystem):
    """The Cancer Imaging Archive as a read-only fsspec filesystem (protocol ``tcia``).

    Parameters
    ----------
    fetch : {"auto", "instance", "series"}
        What to download when an instance is opened whose series is not in the cache.
        ``"instance"``: that instance alone (getSingleImage), cheap for a first look.
        ``"series"``: the whole series into the series cache (one getImage zip), cheapest when
        most of the series will be read. ``"auto"`` (default): single instances until
        :data:`AUTO_SERIES_AFTER` instances of the series are on disk, then the whole series.
    use_listings_cache, listings_expiry_time, max_paths
        fsspec's listings cache (``dircache``) options.
    **client_options
        :class:`~intake_tcia.client.TCIAClient` keywords (``api_url``, ``nlst_api_url``,
        ``cache_dir``, ``timeout``, ``retries``, ``settings``, ...). The client is made on first
        use; nothing is requested before then.

    Examples
    --------
    >>> fs = TCIAFileSystem()                                          # doctest: +SKIP
    >>> fs.ls("tcia://LIDC-IDRI", detail=False)[:2]                    # doctest: +SKIP
    ['LIDC-IDRI/LIDC-IDRI-0001', 'LIDC-IDRI/LIDC-IDRI-0002']
    >>> path = fs.find("tcia://LIDC-IDRI/LIDC-IDRI-0001")[0]           # doctest: +SKIP
    >>> ds = pydicom.dcmread(fs.open(path))                            # doctest: +SKIP
    >>> files = fsspec.open_files("simplecache::tcia://NLST/100002/*/*/*.dcm")  # doctest: +SKIP

    Notes
    -----
    A series directory is listed from its UID alone (getSOPInstanceUIDs); that it belongs to the
    collection, patient and study of its path is checked only when their listing is at hand.
    """

    protocol = "tcia"
    root_marker = ""

    def __init__(
        self,
        *,
        fetch: str = "auto",
        use_listings_cache: bool = True,
        listings_expiry_time: float | None = None,
        max_paths: int | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__(
            use_listings_cache=use_listings_cache,
            listings_expiry_time=listings_expiry_time,
            max_paths=max_paths,
        )
        if fetch not in FETCH_POLICIES:
            raise ValueError(f"fetch must be one of {FETCH_POLICIES}, not {fetch!r}")
        unknown = sorted(set(client_options) - _CLIENT_OPTIONS)
        if unknown:
            raise TypeError(f"TCIAFileSystem got unexpected keyword(s): {', '.join(unknown)}")
        self.fetch = fetch
        self._client_options = client_options
        self._client: TCIAClient | None = None
        self._client_lock = threading.Lock()
        self._series: dict[str, CachedSeries] = {}

    def __repr__(self) -> str:
        settings = self.client.settings
        return (f"TCIAFileSystem(fetch={self.fetch!r}, api_url={settings.api_url!r}, "
                f"cache_dir={str(settings.cache_dir)!r})")

    @property
    def client(self) -> TCIAClient:
        """TCIAClient: the client every request goes through, made on first use."""
        with self._client_lock:
            if self._client is None:
                self._client = TCIAClient(**self._client_options)
            return self._client

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return super()._strip_protocol(path).strip("/")

    # -- listing ---------------------------------------------------------------------------------

    def ls(
        self, path: str, detail: bool = True, *, refresh: bool = False, **kwargs: Any
    ) -> list[dict[str, Any]] | list[str]:
        """List a directory level (one request, then from ``dircache``); a file lists itself.

        Entries carry ``name``, ``type`` and ``size`` (series: FileSize; instances: once on disk;
        else None; other directories: 0), and the fields of the metadata row.
        """
        path = self._strip_protocol(path)
        parts = _split(path)
        if len(parts) == _INSTANCE_DEPTH:
            entries = [self.info(path)]
        elif not refresh and path in self.dircache:
            entries = self.dircache[path]
        else:
            entries = self._list(path, parts)
            self.dircache[path] = entries
        return entries if detail else [entry["name"] for entry in entries]

    def _list(self, path: str, parts: list[str]) -> list[dict[str, Any]]:
        with _naming(path):
            if len(parts) == len(_KEYS):
                entries = self._list_instances(path, parts)
            else:
                entries = self._list_level(path, parts)
        if not entries and parts:
            self.info(path)  # an empty directory, or FileNotFoundError for none at all
        return entries

    def _list_level(self, path: str, parts: list[str]) -> list[dict[str, Any]]:
        client, depth = self.client, len(parts)
        if depth == 0:
            frame = client.collections()
        elif depth == 1:
            frame = client.patients(parts[0])
        elif depth == 2:
            frame = client.studies(collection=parts[0], patient_id=parts[1])
        else:
            frame = client.series(collection=parts[0], patient_id=parts[1], study_uid=parts[2])
        key, prefix = _KEYS[depth], path + "/" if path else ""
        entries = []
        for row in frame.dropna(subset=[key]).drop_duplicates(key).to_dict("records"):
            size = row.get("FileSize") if depth == 3 else 0
            size = None if pd.isna(size) else size
            entries.append(
                {"name": prefix + row[key], "type": "directory", "size": size} | _plain(row)
            )
        return entries

    def _list_instances(self, path: str, parts: list[str]) -> list[dict[str, Any]]:
        collection, series_uid = parts[0], parts[3]
        sizes = self._sizes_on_disk(series_uid)
        return [
            {
                "name": f"{path}/{uid}.dcm",
                "type": "file",
                "size": sizes.get(uid),
                "SOPInstanceUID": uid,
            }
            for uid in _uids_only(
                self.client.sop_instance_uids(series_uid, collection=collection), series_uid)
        ]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """The entry of one path, from its parent's listing (or, for an instance on disk, free).

        A series without FileSize gets its size from getSeriesSize.
        """
        path = self._strip_protocol(path)
        parts = _split(path)
        if not parts:
            return {"name": "", "type": "directory", "size": 0}
        parent = self._parent(path)
        local = self._on_disk(parts) if len(parts) == _INSTANCE_DEPTH else None
        if local is not None and parent not in self.dircache:
            size = local.stat().st_size
            return {"name": path, "type": "file", "size": size, "SOPInstanceUID": parts[4]}
        try:
            listing = self.ls(parent, detail=True)
        except FileNotFoundError as exc:
            raise _missing(path, exc.strerror or str(exc)) from exc
        for entry in listing:
            if entry["name"] != path:
                continue
            if entry["size"] is None and local is not None:
                entry["size"] = local.stat().st_size
            elif entry["size"] is None and len(parts) == len(_KEYS):
                with _naming(path):
                    entry["size"] = self.client.series_size(parts[3])["TotalSizeInBytes"]
            return entry
        raise _missing(path, f"no such {_NAMES[len(parts) - 1]} in tcia://{parent}")

    def du(
        self,
        path: str,
        total: bool = True,
        maxdepth: int | None = None,
        withdirs: bool = False,
        **kwargs: Any,
    ) -> int | dict[str, int]:
        """Bytes under ``path``, summed from its series' sizes (no instance is listed).

        With ``total=False``, a dict of series path (or the instance path) to bytes.
        ``maxdepth`` and ``withdirs`` are accepted for fsspec's signature and not used.
        """
        path = self._strip_protocol(path)
        below = len(_KEYS) - len(_split(path))
        if below <= 0:
            sizes = {path: self.info(path)["size"]}
        else:
            found = self.find(path, maxdepth=below, withdirs=True, detail=False)
            series = [name for name in found if name.count("/") == len(_KEYS) - 1]
            sizes = {name: self.info(name)["size"] for name in series}
        return sum(sizes.values()) if total else sizes

    def invalidate_cache(self, path: str | None = None) -> None:
        """Forget the listings of ``path`` and everything below it (all listings if None)."""
        path = "" if path is None else self._strip_protocol(path)
        for key in list(self.dircache):
            if not path or key == path or key.startswith(path + "/"):
                self.dircache.pop(key, None)

    # -- reading ---------------------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> LocalFileOpener:
        if mode != "rb":
            raise NotImplementedError(f"tcia:// is read-only: cannot open {path!r} with {mode!r}")
        return LocalFileOpener(str(self.local_path(path)), "rb")

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """The bytes of an instance, or of ``[start:end]`` of it (negative: from the end)."""
        with open(self.local_path(path), "rb") as file:
            first, stop, _ = slice(start, end).indices(os.fstat(file.fileno()).st_size)
            file.seek(first)
            return file.read(max(0, stop - first))

    def get_file(
        self,
        rpath: str,
        lpath: Any,
        callback: Callback = DEFAULT_CALLBACK,
        outfile: Any = None,
        **kwargs: Any,
    ) -> None:
        """Copy an instance to the local path or file ``lpath``; a directory is made locally."""
        rpath = self._strip_protocol(rpath)
        if outfile is None and isfilelike(lpath):
            outfile = lpath
        if len(_split(rpath)) < _INSTANCE_DEPTH:
            if outfile is None:
                os.makedirs(lpath, exist_ok=True)
            return
        local = self.local_path(rpath)
        callback.set_size(local.stat().st_size)
        if outfile is None:
            os.makedirs(os.path.dirname(os.path.abspath(lpath)), exist_ok=True)
            shutil.copyfile(local, lpath)
        else:
            with open(local, "rb") as file:
                shutil.copyfileobj(file, outfile)
        callback.relative_update(local.stat().st_size)

    def __reduce__(self) -> tuple[Any, ...]:
        # Secrets given as keywords stay in this process; copies read them from the environment.
        return make_instance, (type(self), self.storage_args, self._options_without_secrets())

    def to_dict(self, *, include_password: bool = True) -> dict[str, Any]:
        """fsspec's serialisable form (``to_json`` too), never with ``api_key``, ``username``
        or ``password``: set those in the environment where the copy is used."""
        data = super().to_dict(include_password=include_password)
        return {k: v for k, v in data.items() if k not in SECRETS}

    def _options_without_secrets(self) -> dict[str, Any]:
        return {k: v for k, v in self.storage_options.items() if k not in SECRETS}

    def ukey(self, path: str) -> str:
        """A key of an instance's content: its path (TCIA instances do not change)."""
        return tokenize(self.protocol, self._strip_protocol(path))

    def local_path(self, path: str) -> Path:
        """The local file holding an instance, fetched as the ``fetch`` option says if needed.

        Raises
        ------
        IsADirectoryError
            For a directory level.
        FileNotFoundError
            For an instance the archive does not have.
        """
        path = self._strip_protocol(path)
        parts = _split(path)
        if len(parts) < _INSTANCE_DEPTH:
            raise IsADirectoryError(errno.EISDIR, "a directory, not a DICOM file", f"tcia://{path}")
        local = self._on_disk(parts)
        if local is not None:
            return local
        collection, series_uid, sop_uid = parts[0], parts[3], parts[4]
        with _naming(path):
            if self.fetch == "instance" or (
                self.fetch == "auto" and self._singles(series_uid) < AUTO_SERIES_AFTER
            ):
                data = self.client.single_image(series_uid, sop_uid, collection=collection)
                local = self.client.cache.store_instance(series_uid, sop_uid,
                                                         _checked(data, sop_uid))
            else:
                self.client.fetch_series(series_uid, collection=collection)
                local = self._on_disk(parts)
        if local is None:
            raise _missing(path, f"series {series_uid} has no instance {sop_uid}")
        self._note_sizes(self._parent(path), series_uid)
        return local

    # -- the on-disk cache -----------------------------------------------------------------------

    def _singles(self, series_uid: str) -> int:
        """How many single instances of a series are on disk."""
        return len(self.client.cache.single_instances(series_uid))

    def _cached_series(self, series_uid: str) -> CachedSeries | None:
        """The series from the series cache (remembered while its files stay), or None."""
        cached = self._series.get(series_uid)
        if cached is None or not cached.path.is_dir():
            cached = self.client.cache.get(series_uid)
            if cached is not None:
                self._series[series_uid] = cached
        return cached

    def _on_disk(self, parts: list[str]) -> Path | None:
        """The local file of an instance: in the series cache, else a single; None if neither."""
        series_uid, sop_uid = parts[3], parts[4]
        cached = self._cached_series(series_uid)
        if cached is not None:
            with contextlib.suppress(FileNotFoundError):
                return cached.instance_path(sop_uid)
            return None
        single = self.client.cache.instance_path(series_uid, sop_uid)
        return single if single.is_file() else None

    def _sizes_on_disk(self, series_uid: str) -> dict[str, int]:
        """SOPInstanceUID -> bytes, of a series' instances on disk."""
        cached = self._cached_series(series_uid)
        if cached is not None:
            return {i.sop_instance_uid: i.size for i in cached.instances}
        singles = self.client.cache.single_instances(series_uid)
        return {sop: path.stat().st_size for sop, path in singles.items()}

    def _note_sizes(self, series_path: str, series_uid: str) -> None:
        """Fill in the sizes of a listed series' instances now on disk."""
        with contextlib.suppress(KeyError):
            listing = self.dircache[series_path]
            sizes = self._sizes_on_disk(series_uid)
            for entry in listing:
                entry["size"] = sizes.get(entry["SOPInstanceUID"], entry["size"])

    # -- read-only -------------------------------------------------------------------------------

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Not possible: tcia:// is read-only."""
        raise NotImplementedError(f"tcia:// is read-only: cannot create {path!r}")

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Not possible: tcia:// is read-only."""
        raise NotImplementedError(f"tcia:// is read-only: cannot create {path!r}")

    def _rm(self, path: str) -> None:
        raise NotImplementedError(f"tcia:// is read-only: cannot remove {path!r}")


def _uids_only(values: list[str], series_uid: str) -> list[str]:
    """The distinct values that are DICOM UIDs: a server's ``../../x`` is no path to list (it
    could not be opened), so it is left out, with a warning."""
    uids = []
    for value in dict.fromkeys(values):
        try:
            uids.append(validate_uid(value, "SOPInstanceUID"))
        except (TypeError, ValueError):
            log.warning("series %s: the server listed %.80r, no SOPInstanceUID; left out",
                        series_uid, value)
    return uids


def _checked(data: bytes, sop_uid: str) -> bytes:
    """``data`` if it is the DICOM instance ``sop_uid``, else TCIAIntegrityError (only the
    header up to the SOPInstanceUID is parsed)."""
    from .retrieval.dicomhead import sop_instance_uid_of

    found = sop_instance_uid_of(data)
    if found is None:
        raise TCIAIntegrityError(f"getSingleImage for {sop_uid} did not answer DICOM")
    if found != sop_uid:
        raise TCIAIntegrityError(f"getSingleImage for {sop_uid} answered instance {found}")
    return data


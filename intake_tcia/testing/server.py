"""A real NBIA v4 HTTP server on loopback, serving the sample archive.

Two listeners stand for TCIA's two hosts: ``api_url`` (the public collections, plus a DataCite
API under ``/datacite/``) and ``nlst_api_url`` (collection NLST). A UID of one host is unknown to
the other (400 "not granted" from the image endpoints, empty answers from queries), as on TCIA.

Behaviour follows reference/nbia-api.md and v4_formatting_rules.md: HTTP/1.1 with keep-alive;
empty body for no rows; null keys dropped per row; plain-text 400s typed ``application/json``
for unknown or missing parameters and unknown UIDs; 500 for an unknown ``format``;
case-insensitive filters on Collection, PatientID, Modality, BodyPartExamined, Manufacturer and
ManufacturerModelName; zips streamed chunked, without Content-Length.

Endpoint spelling: CBIIT/NBIA-TCIA defines ``@Path("/v4/getSeriesMetadata")`` (POST, form field
``list``; class V4_getSeriesMetadata) and, in older revisions, ``@Path("/v4/getSeriesMetaData")``
(class V4_getSeriesMetaData, a GET taking SeriesInstanceUID with v1-style columns). This server
answers the POST under both spellings. getPatient takes ``PatientID`` (reference) and also
``PatientId`` (the server code's allowed set). getSeriesSize and getSOPInstanceUIDs answer an
unknown UID with an empty body (no rows).

Flavours (``ArchiveServer(flavour=...)``, see :mod:`intake_tcia.testing._flavours`): the same
archive as NBIA v1 or v2 (old field names and date styles; v2 behind OAuth tokens), as the legacy
TCIA REST API (``/services/v4/TCIA/query/``, ``api_key`` header) or as an NBIA v4 that wants a
token. Token flavours answer ``POST /nbia-api/oauth/token`` (password and refresh-token grants,
as NBIA's Keycloak does); every flavour serves shared carts (``getContentsByName``).
"""

from __future__ import annotations

import secrets
import threading
import time
import zipfile
from typing import Any

from ._flavours import SERVER_FLAVOURS, cart_endpoint
from ._handler import (  # noqa: F401 - also handed on: the IDC bucket server builds on them
    DATACITE_PATH,
    TRUNCATE_AFTER,
    RequestRecord,
    _BodyWriter,
    _Gone,
    _Handler,
    _Listener,
)
from ._hostview import HostView
from .builder import SampleArchive
from .faults import FaultPlan

__all__ = ["ArchiveServer", "RequestRecord", "API_PATH", "SAMPLE_CART", "SAMPLE_API_KEY"]

API_PATH = "/nbia-api/services/v4/"
#: The shared cart every sample archive holds (three series of the main host, one of NLST's).
SAMPLE_CART = "nbia-sample-cart"
#: The api_key the legacy flavour accepts.
SAMPLE_API_KEY = "sample-archive-api-key"
_COMPRESSIONS = {"deflated": zipfile.ZIP_DEFLATED, "stored": zipfile.ZIP_STORED}


class ArchiveServer:
    """The sample archive as a real NBIA v4 server on loopback (two hosts and DataCite).

    Parameters
    ----------
    archive : SampleArchive, optional
        What to serve; :meth:`SampleArchive.default` (built once per process) when omitted.
    host : str
        Interface to listen on.
    port, nlst_port : int
        Ports of the main and NLST listeners (0: free ports).
    compression : {"deflated", "stored"}
        Zip compression of getImage answers (NBIA deflates; stored is faster).
    verbose : bool
        Log each request to stderr.
    flavour : {"v4", "token", "v1", "v2", "legacy"}
        The dialect to answer in (see the module docstring); the data are the same in all.

    Attributes
    ----------
    carts : dict of str to list of str
        Shared carts: name -> SeriesInstanceUIDs (:data:`SAMPLE_CART` to begin with).
    users : dict of str to str
        Logins the token endpoint accepts (the guest ``nbia_guest`` with an empty password).
    api_key : str
        The ``api_key`` header the legacy flavour wants (:data:`SAMPLE_API_KEY`).
    token_lifetime : float
        Seconds an access token lives (``expires_in``).

    Examples
    --------
    >>> with ArchiveServer() as server:                       # doctest: +SKIP
    ...     requests.get(server.api_url + "getCollectionValues").json()
    [{'Collection': 'Pydicom-CT-Series'}, {'Collection': 'Pydicom-DICOMDIR'}]
    """

    def __init__(self, archive: SampleArchive | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, nlst_port: int = 0, compression: str = "deflated",
                 verbose: bool = False, flavour: str = "v4") -> None:
        if compression not in _COMPRESSIONS:
            raise ValueError(f"compression must be one of {sorted(_COMPRESSIONS)}")
        if flavour not in SERVER_FLAVOURS:
            raise ValueError(f"flavour must be one of {sorted(SERVER_FLAVOURS)}")
        self.flavour = flavour
        self._flavour = SERVER_FLAVOURS[flavour]
        self._endpoints = self._flavour.endpoints()
        self.archive = archive if archive is not None else SampleArchive.default()
        self.faults = FaultPlan()
        self.compression = _COMPRESSIONS[compression]
        self.verbose = verbose
        self._address = (host, port, nlst_port)
        self._listeners: dict[str, _Listener] = {}
        self._threads: list[threading.Thread] = []
        self._log_lock = threading.Lock()
        self._log_records: list[RequestRecord] = []
        self._views: dict[str, tuple[int, HostView]] = {}
        self._stopping = threading.Event()
        main = self.archive.series
        self.carts: dict[str, list[str]] = {SAMPLE_CART: (
            sorted(main.loc[main["host"] == "main", "SeriesInstanceUID"])[:3]
            + sorted(main.loc[main["host"] == "nlst", "SeriesInstanceUID"])[:1]
        )}
        self._cart = cart_endpoint(self.carts)
        self.users = {"nbia_guest": ""}
        self.api_key = SAMPLE_API_KEY
        self.token_lifetime = 7200.0
        self._auth_lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # access token -> expiry (monotonic)
        self._refresh_tokens: set[str] = set()

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> ArchiveServer:
        """Start both listeners in daemon threads; returns self."""
        if self._listeners:
            return self
        self._stopping.clear()
        host, port, nlst_port = self._address
        for name, number in (("main", port), ("nlst", nlst_port)):
            handler = type(f"_{name.title()}Handler", (_Handler,), {"owner": self, "host": name})
            listener = _Listener((host, number), handler)
            thread = threading.Thread(target=listener.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"intake-tcia-{name}", daemon=True)
            thread.start()
            self._listeners[name] = listener
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop both listeners (hanging or endless answers are cut short)."""
        self._stopping.set()
        for listener in self._listeners.values():
            listener.shutdown()
            listener.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listeners.clear()
        self._threads.clear()

    def __enter__(self) -> ArchiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        if not self._listeners:
            return f"ArchiveServer(flavour={self.flavour!r}, stopped)"
        return (f"ArchiveServer(api_url={self.api_url!r}, nlst_api_url={self.nlst_api_url!r}, "
                f"flavour={self.flavour!r})")

    # -- addresses ---------------------------------------------------------------------------
    def _base(self, name: str) -> str:
        if name not in self._listeners:
            raise RuntimeError("the server is not running; call start() first")
        host, port = self._listeners[name].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        """str: Base URL of the main host, ``http://127.0.0.1:PORT/nbia-api/services/v4/``
        (the flavour's path)."""
        return self._base("main") + self._flavour.api_path

    @property
    def nlst_api_url(self) -> str:
        """str: Base URL of the NLST host."""
        return self._base("nlst") + self._flavour.api_path

    @property
    def environ(self) -> dict[str, str]:
        """dict of str to str: The ``INTAKE_TCIA_*`` settings that point clients, catalogs and
        ``tcia://`` at this server (``os.environ.update(server.environ)``)."""
        return {
            "INTAKE_TCIA_API_URL": self.api_url,
            "INTAKE_TCIA_NLST_API_URL": self.nlst_api_url,
            "INTAKE_TCIA_DATACITE_URL": self.datacite_url,
        }

    # -- credentials -------------------------------------------------------------------------
    @property
    def tokens(self) -> frozenset[str]:
        """frozenset of str: The access tokens issued and not yet expired or revoked."""
        now = time.monotonic()
        with self._auth_lock:
            return frozenset(t for t, expiry in self._tokens.items() if now < expiry)

    def revoke_tokens(self, *, refresh: bool = False) -> None:
        """Forget the access tokens issued (and the refresh tokens, if ``refresh``)."""
        with self._auth_lock:
            self._tokens.clear()
            if refresh:
                self._refresh_tokens.clear()

    def _authorized(self, headers: Any) -> bool:
        scheme = self._flavour.auth
        if scheme == "api_key":
            return headers.get("api_key") == self.api_key
        if scheme == "token":
            token = (headers.get("Authorization") or "").removeprefix("Bearer ")
            with self._auth_lock:
                expiry = self._tokens.get(token)
            return expiry is not None and time.monotonic() < expiry
        return True

    def _grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Answer the OAuth token endpoint (password and refresh_token grants)."""
        refused = {"error": "invalid_grant", "error_description": "Invalid user credentials"}
        if form.get("client_id") != "NBIA":
            return 401, {"error": "invalid_client"}
        grant = form.get("grant_type")
        with self._auth_lock:
            if grant == "password":
                user = form.get("username")
                if user not in self.users or self.users[user] != form.get("password", ""):
                    return 401, refused
            elif grant == "refresh_token":
                if form.get("refresh_token") not in self._refresh_tokens:
                    return 400, {**refused, "error_description": "Invalid refresh token"}
                self._refresh_tokens.discard(form["refresh_token"])
            else:
                return 400, {"error": "unsupported_grant_type"}
            access, refresh = secrets.token_hex(16), secrets.token_hex(16)
            self._tokens[access] = time.monotonic() + self.token_lifetime
            self._refresh_tokens.add(refresh)
        return 200, {"access_token": access, "expires_in": self.token_lifetime,
                     "refresh_expires_in": 2 * self.token_lifetime, "refresh_token": refresh,
                     "token_type": "bearer", "not-before-policy": 0, "scope": "profile email"}

    @property
    def datacite_url(self) -> str:
        """str: Base URL of the DataCite API (``dois/{doi}`` is appended)."""
        return self._base("main") + DATACITE_PATH

    # -- request log -------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        """list of RequestRecord: The requests received, oldest first (a copy)."""
        with self._log_lock:
            return list(self._log_records)

    def count(self, endpoint: str | None = None, host: str | None = None) -> int:
        """Number of requests received, optionally for one endpoint and/or host."""
        return sum(1 for r in self.requests
                   if endpoint in (None, r.endpoint) and host in (None, r.host))

    def clear_log(self) -> None:
        """Forget the requests received."""
        with self._log_lock:
            self._log_records.clear()

    def reset(self) -> None:
        """Clear the faults and the request log."""
        self.faults.clear()
        self.clear_log()

    def _log(self, record: RequestRecord) -> RequestRecord:
        with self._log_lock:
            self._log_records.append(record)
        return record

    def _view(self, host: str) -> HostView:
        version = self.archive.version
        cached = self._views.get(host)
        if cached is None or cached[0] != version:
            cached = (version, HostView(self.archive, host))
            self._views[host] = cached
        return cached[1]

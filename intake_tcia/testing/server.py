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

import json
import secrets
import socket
import struct
import threading
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import _datacite
from ._endpoints import ApiError, Endpoint, HostView, check_params, not_granted
from ._flavours import SERVER_FLAVOURS, TOKEN_PATH, cart_endpoint
from ._render import CONTENT_TYPES, FORMATS, render
from ._zipstream import write_series_zip
from .builder import SampleArchive
from .faults import HOSTILE_KINDS, Fault, FaultPlan

__all__ = ["ArchiveServer", "RequestRecord", "API_PATH", "SAMPLE_CART", "SAMPLE_API_KEY"]

API_PATH = "/nbia-api/services/v4/"
#: The shared cart every sample archive holds (three series of the main host, one of NLST's).
SAMPLE_CART = "nbia-sample-cart"
#: The api_key the legacy flavour accepts.
SAMPLE_API_KEY = "sample-archive-api-key"
DATACITE_PATH = "/datacite/"
_CHUNK = 1 << 20
_COMPRESSIONS = {"deflated": zipfile.ZIP_DEFLATED, "stored": zipfile.ZIP_STORED}
_HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body>"
              b"<h1>NBIA is down for scheduled maintenance</h1><p>Please try again later.</p>"
              b"</body></html>")


@dataclass
class RequestRecord:
    """One request the server received.

    Attributes
    ----------
    host : str
        ``"main"``, ``"nlst"`` or ``"datacite"``.
    method : str
        ``"GET"`` or ``"POST"``.
    endpoint : str
        The last path segment (``"getSeries"``), or the DataCite path (``"dois/10.7937/..."``).
    params : dict of str to str
        Query (and form) parameters; a repeated one is comma-joined.
    status : int or None
        The status sent (None if none was, e.g. a ``hang`` fault).
    bytes_sent : int
        Body bytes written so far.
    """

    host: str
    method: str
    endpoint: str
    params: dict[str, str]
    status: int | None = None
    bytes_sent: int = 0


class _Gone(Exception):
    """The response is over (connection closed or reset on purpose)."""


class _BodyWriter:
    """Write a response body: chunked or raw, paced, optionally cut after some bytes.

    ``write`` never raises: once the client is gone or the cut-off is reached, bytes are dropped
    and :attr:`dead` is set, so a zip being written can stop early.
    """

    def __init__(self, handler: _Handler, record: RequestRecord, *, chunked: bool,
                 bandwidth: float | None, cut_after: int | None,
                 stall: tuple[int, float] | None = None) -> None:
        self._send = handler.wfile.write
        self._record = record
        self._chunked = chunked
        self._bandwidth = bandwidth
        self._cut_after = cut_after
        self._stall = stall  # (after how many bytes, for how many seconds)
        self._stopping = handler.owner._stopping
        self._buffer = bytearray()
        self._started = time.monotonic()
        self.dead = False
        self.cut = False

    def write(self, data: bytes) -> int:
        if not self.dead:
            if not self._buffer and len(data) >= _CHUNK:
                self._emit(data)
            else:
                self._buffer += data
                if len(self._buffer) >= _CHUNK:
                    self._emit(bytes(self._buffer))
                    self._buffer.clear()
        return len(data)

    def flush(self) -> None:
        """Nothing: bytes go out in large chunks."""

    def finish(self, *, terminate: bool = True) -> None:
        """Send what is buffered and, if ``terminate``, the final chunk."""
        if self._buffer and not self.dead:
            self._emit(bytes(self._buffer))
        self._buffer.clear()
        if terminate and self._chunked and not (self.dead and not self.cut):
            self._raw(b"0\r\n\r\n")

    def _emit(self, data: bytes) -> None:
        if self._stall is not None and 0 <= self._stall[0] - self._record.bytes_sent < len(data):
            room, seconds = self._stall[0] - self._record.bytes_sent, self._stall[1]
            self._stall = None
            self._emit(data[:room])
            self._stopping.wait(seconds)
            data = data[room:]
        if self._cut_after is not None:
            room = self._cut_after - self._record.bytes_sent
            if len(data) >= room:
                data, self.cut = data[:max(room, 0)], True
        step = max(1024, int(self._bandwidth / 50)) if self._bandwidth else len(data)
        view = memoryview(data)
        for start in range(0, len(data), max(step, 1)):
            piece = view[start:start + step]
            self._record.bytes_sent += len(piece)
            if self._chunked:
                self._raw(b"%x\r\n" % len(piece), piece, b"\r\n")
            else:
                self._raw(piece)
            if self._bandwidth:
                ahead = self._record.bytes_sent / self._bandwidth - (
                    time.monotonic() - self._started)
                if ahead > 0:
                    time.sleep(ahead)
            if self.dead:
                return
        if self.cut:
            self.dead = True

    def _raw(self, *parts: bytes | memoryview) -> None:
        try:
            for part in parts:
                self._send(part)
        except OSError:
            self.dead = True


class _Handler(BaseHTTPRequestHandler):
    """Answers one listener's requests (subclassed per listener with ``owner`` and ``host``)."""

    protocol_version = "HTTP/1.1"
    server_version = "Apache-Coyote/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm on, every answer on a
    # kept-alive connection would wait ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    owner: ArchiveServer
    host: str

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        if self.owner.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        self._handle("POST")

    # -- dispatch ----------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        params = _params(url.query)
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            form = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            params.update(_params(form))
        path = unquote(url.path)
        if self.host == "main" and path.startswith(DATACITE_PATH):
            record = self.owner._log(RequestRecord("datacite", method,
                                                   path[len(DATACITE_PATH):], params))
            status, payload = _datacite.lookup(self.owner.archive.collections,
                                               path[len(DATACITE_PATH):])
            self._send_bytes(record, status, json.dumps(payload).encode(),
                             "application/vnd.api+json")
            return
        flavour = self.owner._flavour
        if path == TOKEN_PATH:
            shown = {k: "***" if k == "password" else v for k, v in params.items()}
            record = self.owner._log(RequestRecord(self.host, method, "oauth/token", shown))
            status, answer = self.owner._grant(params) if method == "POST" else (
                405, {"error": "method_not_allowed"})
            self._send_bytes(record, status, json.dumps(answer).encode(), "application/json")
            return
        if path == flavour.cart_path:
            name, endpoint = path.rpartition("/")[2], self.owner._cart
        else:
            name = path[len(flavour.api_path):] if path.startswith(flavour.api_path) else path
            endpoint = self.owner._endpoints.get(name)
        record = self.owner._log(RequestRecord(self.host, method, name, params))
        if endpoint is None:
            self._send_bytes(record, 404, b"Not Found", "text/plain")
            return
        if method != endpoint.method:
            self._send_bytes(record, 405, b"Method Not Allowed", "text/plain")
            return
        if not self.owner._authorized(self.headers):
            self._refuse(record, flavour.auth)
            return
        series = params.get("SeriesInstanceUID") or params.get("SeriesUID")
        fault = self.owner.faults.take(self.host, endpoint.name, series)
        if self.owner.faults.latency:
            time.sleep(self.owner.faults.latency)
        try:
            if fault is not None and self._early_fault(record, endpoint, fault):
                return
            self._answer(record, endpoint, params, fault)
        except ApiError as error:
            self._send_bytes(record, error.status, error.text.encode(), "application/json")
        except _Gone:
            self.close_connection = True

    def _answer(self, record: RequestRecord, endpoint: Endpoint, params: dict[str, str],
                fault: Fault | None) -> None:
        flavour = self.owner._flavour
        params = flavour.v4_params(endpoint.name, params)
        fmt = "json"
        if endpoint.formatted:
            fmt = params.get("format", flavour.default_format).lower()
            if fmt not in FORMATS:
                raise ApiError(500, "Server was not able to process your request")
        check_params(endpoint, params)
        view = self.owner._view(self.host)
        if endpoint.answer is not None:
            body, content_type = endpoint.answer(view, params)
            self._stream(record, 200, [body], content_type, {}, fault=fault)
            return
        if endpoint.query is None:
            self._image(record, endpoint, params, view, fault)
            return
        frame = flavour.render(endpoint.name, endpoint.query(view, params))
        headers = {}
        if endpoint.method == "POST":
            fmt = "csv-download"
            headers["Content-Disposition"] = 'attachment; filename="SeriesMetaData.csv"'
        if frame.empty and fault is None:
            self._send_bytes(record, 200, b"", "application/json")
            return
        self._stream(record, 200, render(frame, fmt), CONTENT_TYPES[fmt], headers, fault=fault)

    def _image(self, record: RequestRecord, endpoint: Endpoint, params: dict[str, str],
               view: HostView, fault: Fault | None) -> None:
        uid = params["SeriesInstanceUID"]
        archive = self.owner.archive
        if uid not in view.uids:
            raise not_granted(uid)
        files = archive.instances(uid)
        if endpoint.name == "getSingleImage":
            paths = [path for sop, path in files if sop == params["SOPInstanceUID"]]
            if not paths:
                raise not_granted(uid)
            size = paths[0].stat().st_size
            self._stream(record, 200, _read_file(paths[0]), "application/dicom",
                         {"Content-Length": str(size)}, fault=fault, chunked=False,
                         default_cut=size // 2)
            return
        with_license = endpoint.name == "getImage"
        if with_license and params.get("NewFileNames", "").lower() == "yes":
            names = archive.new_file_names(uid)
        else:
            names = [f"{i:08d}.dcm" for i in range(1, len(files) + 1)]
        info = archive.collection_of(uid)
        kind = fault.kind if fault else None
        fault_params = fault.params if fault else {}
        total = sum(path.stat().st_size for _, path in files)
        headers = {"Content-Disposition": f'attachment; filename="{uid}.zip"'}
        # A reset that is not reached still resets at the end; a truncation must be reached, and
        # a deflated zip can be far smaller than half its files: cut it within the first KiB.
        cut = max(total // 2, 1) if kind != "truncate" else TRUNCATE_AFTER
        writer = self._start(record, 200, "application/octet-stream", headers, fault=fault,
                             default_cut=cut)
        write_series_zip(
            writer,
            [(name, path) for name, (_, path) in zip(names, files, strict=True)],
            license_text=info.license_text if (with_license and info) else None,
            include_md5=not with_license or params.get("IncludeMD5", "").lower() == "yes",
            compression=self.owner.compression,
            stopped=lambda: writer.dead,
            wrong_md5=int(fault_params.get("file", 0)) if kind == "wrong_md5" else None,
            hostile=kind if kind in HOSTILE_KINDS else None,
            hostile_params=fault_params,
        )
        self._end(writer, fault)

    def _refuse(self, record: RequestRecord, scheme: str) -> None:
        """401 for a request without the credentials the flavour wants."""
        if scheme == "token":
            body = {"error": "invalid_token", "error_description": "Access token expired or "
                    "missing"}
            self._send_bytes(record, 401, json.dumps(body).encode(), "application/json",
                             {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        else:
            self._send_bytes(record, 401, b"Unauthorized: a valid api_key header is required",
                             "text/plain")

    # -- faults that replace the answer ------------------------------------------------------
    def _early_fault(self, record: RequestRecord, endpoint: Endpoint, fault: Fault) -> bool:
        params = fault.params
        if fault.kind == "status":
            code = int(params.get("code", 503))
            headers = {}
            if params.get("retry_after") is not None:
                headers["Retry-After"] = str(params["retry_after"])
            text = params.get("text") or f"HTTP {code}: injected by the sample archive"
            self._send_bytes(record, code, text.encode(), "text/plain", headers)
        elif fault.kind == "html":
            self._send_bytes(record, 200, _HTML_PAGE, "text/html;charset=UTF-8")
        elif fault.kind == "invalid_json":
            self._send_bytes(record, 200, b'[{"Collection":"Pydicom-DICOMDIR"},{"Collection":',
                             "application/json")
        elif fault.kind == "hang":
            self.owner._stopping.wait(float(params.get("seconds", 5)))
            self.close_connection = True
        elif fault.kind == "endless":
            self._endless(record, endpoint, float(params.get("seconds", 5)))
        else:
            return False
        return True

    def _endless(self, record: RequestRecord, endpoint: Endpoint, seconds: float) -> None:
        zipped = endpoint.name in ("getImage", "getImageWithMD5Hash")
        writer = self._start(record, 200, "application/octet-stream" if zipped
                             else "application/json", {}, fault=None)
        filler = bytes(65536) if zipped else b'{"Collection":"Pydicom-DICOMDIR"},' * 1900
        writer.write(b"" if zipped else b"[")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not writer.dead:
            writer.write(filler)
            writer.finish(terminate=False)
            if self.owner._stopping.wait(0.01):
                break
        self.close_connection = True

    # -- sending -----------------------------------------------------------------------------
    def _send_bytes(self, record: RequestRecord, status: int, body: bytes, content_type: str,
                    headers: dict[str, str] | None = None) -> None:
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        writer = _BodyWriter(self, record, chunked=False, bandwidth=self.owner.faults.bandwidth,
                             cut_after=None)
        writer.write(body)
        writer.finish()

    def _start(self, record: RequestRecord, status: int, content_type: str,
               headers: dict[str, str], *, fault: Fault | None, chunked: bool = True,
               default_cut: int | None = None) -> _BodyWriter:
        """Send the status line and headers; return the body writer."""
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        cut_after = stall = None
        if fault is not None and fault.kind in ("reset", "truncate"):
            cut_after = fault.params.get("after_bytes", default_cut)
        if fault is not None and fault.kind == "stall":
            stall = (int(fault.params.get("after_bytes", default_cut or 0)),
                     float(fault.params.get("seconds", 2)))
        return _BodyWriter(self, record, chunked=chunked, bandwidth=self.owner.faults.bandwidth,
                           cut_after=None if cut_after is None else int(cut_after), stall=stall)

    def _stream(self, record: RequestRecord, status: int, body: Iterable[bytes],
                content_type: str, headers: dict[str, str], *, fault: Fault | None,
                chunked: bool = True, default_cut: int | None = None) -> None:
        writer = self._start(record, status, content_type, headers, fault=fault, chunked=chunked,
                             default_cut=default_cut)
        for piece in body:
            writer.write(piece)
            if writer.dead:
                break
        self._end(writer, fault)

    def _end(self, writer: _BodyWriter, fault: Fault | None) -> None:
        """Finish a body: normally, cleanly cut (truncate) or with a connection reset."""
        if fault is not None and fault.kind == "reset":
            writer.finish(terminate=False)
            self._reset()
        writer.finish()

    def _reset(self) -> None:
        """Abort the connection with a TCP reset."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass
        raise _Gone


#: Where a ``truncate`` fault cuts a zip when not told (every series zip is longer).
TRUNCATE_AFTER = 1024


def _params(query: str) -> dict[str, str]:
    return {key: ",".join(values)
            for key, values in parse_qs(query, keep_blank_values=True).items()}


def _read_file(path: Any) -> Iterable[bytes]:
    with open(path, "rb") as src:
        while block := src.read(_CHUNK):
            yield block


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that went away; report anything else."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, _Gone)):
            super().handle_error(request, client_address)


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

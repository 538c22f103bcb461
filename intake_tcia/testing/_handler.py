"""The HTTP side of :class:`~intake_tcia.testing.server.ArchiveServer`: one request handler per
listener, the body writer that paces, cuts and resets answers, and the request record.

The handler dispatches a request to the owner's endpoints (DataCite lookups, the OAuth token
endpoint, shared carts, queries, image zips), applies the owner's fault plan and logs a
:class:`RequestRecord` with the owner.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import _datacite
from ._endpoints import Endpoint, check_params
from ._flavours import TOKEN_PATH
from ._hostview import ApiError, HostView, not_granted
from ._render import CONTENT_TYPES, FORMATS, render
from ._zipstream import write_series_zip
from .faults import HOSTILE_KINDS, Fault

__all__ = ["DATACITE_PATH", "TRUNCATE_AFTER", "RequestRecord"]

DATACITE_PATH = "/datacite/"
_CHUNK = 1 << 20
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
    owner: Any  # the ArchiveServer this listener belongs to
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

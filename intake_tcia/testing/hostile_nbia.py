"""A hostile NBIA host on loopback: a small proxy in front of an :class:`ArchiveServer` that
answers chosen endpoints with what no honest server sends.

Requests to endpoints without an attack are forwarded to the backing server as they are.
Attacks (``nbia.attacks[endpoint] = (kind, params)``):

=================  ===============================================================================
kind               answer
=================  ===============================================================================
``cut_headers``    ``HTTP/1.1 200 OK`` and one complete header line (``line`` =
                   ``Transfer-Encoding: chunked``), then the connection closes: no blank line
``redirect_loop``  302 to the same endpoint with a new ``hop`` parameter each time, forever
``endless_csv``    200 ``text/csv``: the getSeriesMetadata header line, then rows without end
``bad_crc``        the backing zip, rewritten STORED with the CRC of its first DICOM member wrong
                   (in the local header and the central directory); md5hashes.csv still right
=================  ===============================================================================
"""

from __future__ import annotations

import http.client
import io
import struct
import threading
import zipfile
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from ._loopback import LoopbackServer

__all__ = ["HostileNBIA", "bad_crc_zip"]

_CSV_HEADER = (b'"Series UID","Collection","3rd Party Analysis","Data Description URI",'
               b'"Subject ID","Study UID","Study Description","Study Date","Series Description",'
               b'"Manufacturer","Modality","SOP Class Name","SOP Class UID","Number of Images",'
               b'"File Size","File Location","Download Timestamp"\r\n')
_CSV_ROW = (b'"1.2.3.4.5","Evil","NO","","P","1.2.3","d","01-01-2000","s","m","CT","CT Image '
            b'Storage","1.2.840.10008.5.1.4.1.1.2","1","100","./x","2024-01-01"\r\n') * 256


def bad_crc_zip(zipped: bytes) -> bytes:
    """``zipped`` rewritten with every member STORED and the first DICOM member's CRC wrong in
    its local header and in the central directory (the bytes themselves unchanged)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zipped)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info), zipfile.ZIP_STORED)
    data = bytearray(out.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as written:
        victim = next(i for i in written.infolist() if i.filename.endswith(".dcm"))
    wrong = struct.pack("<I", victim.CRC ^ 0x5A5A5A5A)
    data[victim.header_offset + 14 : victim.header_offset + 18] = wrong
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_length].decode() == victim.filename:
            data[at + 16 : at + 20] = wrong
        at = data.find(b"PK\x01\x02", at + 46)
    return bytes(data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: HostileNBIA

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def _answer(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        endpoint = url.path.rstrip("/").rpartition("/")[2]
        self.owner._log(endpoint)
        kind, params = self.owner.attacks.get(endpoint, (None, {}))
        try:
            if kind == "cut_headers":
                line = params.get("line", "Transfer-Encoding: chunked")
                self._send(b"HTTP/1.1 200 OK\r\n" + line.encode() + b"\r\n")
                self.close_connection = True
            elif kind == "redirect_loop":
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                query["hop"] = str(int(query.get("hop", "0")) + 1)
                self.send_response(302)
                self.send_header("Location", f"{url.path}?{urlencode(query)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif kind == "endless_csv":
                self.send_response(200)
                self.send_header("Content-Type", "text/csv")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self._send(b"%x\r\n%s\r\n" % (len(_CSV_HEADER), _CSV_HEADER))
                chunk = b"%x\r\n%s\r\n" % (len(_CSV_ROW), _CSV_ROW)
                while not self.owner._stopping.is_set():
                    self._send(chunk)
            else:
                status, headers, answer = self._forward(method, body)
                if kind == "bad_crc" and status == 200:
                    answer = bad_crc_zip(answer)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "transfer-encoding", "connection",
                                            "server", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self._send(answer)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        self.owner._count(len(data))

    def _forward(self, method: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        backing = urlsplit(self.owner.backing_url)
        connection = http.client.HTTPConnection(backing.hostname, backing.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() in ("content-type", "authorization", "api_key")}
            connection.request(method, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


class HostileNBIA(LoopbackServer):
    """A loopback NBIA host forwarding to ``backing_url`` (an ArchiveServer's ``api_url``),
    except for the endpoints under attack.

    Attributes
    ----------
    attacks : dict of str to (str, dict)
        The attack of each endpoint (see the module docstring).
    sent_bytes : int
        Body bytes sent so far by the attacks and forwards.
    """

    def __init__(self, backing_url: str, host: str = "127.0.0.1") -> None:
        self.backing_url = backing_url
        self.attacks: dict[str, tuple[str, dict[str, Any]]] = {}
        self.sent_bytes = 0
        self._endpoints: list[str] = []
        self._lock = threading.Lock()
        super().__init__(_Handler, host, "intake-tcia-hostile-nbia")

    @property
    def api_url(self) -> str:
        """str: this host's base URL (the backing server's path on this port)."""
        return self.address + urlsplit(self.backing_url).path

    def count(self, endpoint: str | None = None) -> int:
        """Requests received, optionally for one endpoint."""
        with self._lock:
            return sum(1 for e in self._endpoints if endpoint in (None, e))

    def _log(self, endpoint: str) -> None:
        with self._lock:
            self._endpoints.append(endpoint)

    def _count(self, n: int) -> None:
        with self._lock:
            self.sent_bytes += n

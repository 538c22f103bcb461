"""A replay NBIA server for the benchmarks: recorded getImage zips, a bandwidth cap, a latency.

The sample archive deflates its zips as they are asked for, which costs this machine's CPU while
the contenders run. Here each series' getImage zip is recorded once (deflated, as NBIA sends
it) and replayed from disk: every answer waits ``latency`` seconds, then a zip goes out chunked
at ``bandwidth`` bytes/s per connection. Every other request is passed to the sample archive
(after the same latency), so the clients see one whole NBIA server.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

_PIECE = 1 << 16


class ReplayServer:
    """Serve recorded zips of ``upstream`` (a sample archive's ``api_url``) from ``folder``.

    Parameters
    ----------
    upstream : str
        The sample archive's base URL (``.../v4/``); answers everything but getImage.
    folder : Path
        Where the zips are recorded (``<SeriesInstanceUID>.zip``).
    bandwidth : float
        Bytes per second per connection for zips.
    latency : float
        Seconds before every answer.
    """

    def __init__(self, upstream: str, folder: Path, *, bandwidth: float, latency: float) -> None:
        self.upstream = upstream
        self.folder = folder
        self.bandwidth = bandwidth
        self.latency = latency
        folder.mkdir(parents=True, exist_ok=True)
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        path = urlsplit(upstream).path
        self.api_url = f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def record(self, uid: str) -> int:
        """Record a series' zip (getImage, new file names, with md5hashes.csv); its size."""
        target = self.folder / f"{uid}.zip"
        url = f"{self.upstream}getImage?SeriesInstanceUID={uid}&NewFileNames=Yes&IncludeMD5=Yes"
        with urllib.request.urlopen(url) as answer, open(target, "wb") as out:
            while block := answer.read(1 << 20):
                out.write(block)
        return target.stat().st_size

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_owner: ReplayServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._answer(None)

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _answer(self, body: bytes | None) -> None:
        owner = self.server_owner
        time.sleep(owner.latency)
        parts = urlsplit(self.path)
        if parts.path.endswith("/getImage"):
            uid = parse_qs(parts.query).get("SeriesInstanceUID", [""])[0]
            self._replay(owner.folder / f"{uid}.zip", owner.bandwidth)
            return
        request = urllib.request.Request(
            owner.upstream + parts.path.rsplit("/", 1)[-1] + (f"?{parts.query}" if parts.query
                                                             else ""),
            data=body, method=self.command,
            headers={k: v for k, v in self.headers.items() if k.lower() == "content-type"},
        )
        try:
            with urllib.request.urlopen(request) as answer:
                status, headers, data = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as exc:
            status, headers, data = exc.code, exc.headers, exc.read()
        self.send_response(status)
        self.send_header("Content-Type", headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _replay(self, path: Path, bandwidth: float) -> None:
        if not path.is_file():
            self.send_error(400, "The user has not been granted the access to image")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        start, sent = time.monotonic(), 0
        with open(path, "rb") as f:
            while piece := f.read(_PIECE):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
                ahead = sent / bandwidth - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        self.wfile.write(b"0\r\n\r\n")

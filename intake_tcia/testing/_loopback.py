"""A loopback HTTP server run on a thread, for the hostile servers of the tests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["LoopbackServer"]


class _QuietServer(ThreadingHTTPServer):
    """Clients that give up mid-answer are what these servers are for: no traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class LoopbackServer:
    """Serves ``handler`` (a request handler class whose ``owner`` becomes this object) on a
    free loopback port while used as a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str, name: str) -> None:
        self._stopping = threading.Event()
        bound = type(handler.__name__, (handler,), {"owner": self})
        self._server = _QuietServer((host, 0), bound)
        self._name = name

    def __enter__(self) -> Any:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True, name=self._name).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def address(self) -> str:
        """str: ``http://127.0.0.1:PORT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

"""The one HTTP transport of intake-tcia: a pooled session, timeouts, retries, error mapping.

Nothing else in the package talks HTTP. Each operation (a query, a series download) gets one
:class:`RetryBudget` of ``settings.retries`` retries, which everything that can go wrong in it
draws from: 429 and 5xx answers (waiting as Retry-After says, up to ``max_backoff``), refused or
timed-out connections, and bodies cut off mid-way. So an operation never makes more than
``1 + retries`` requests, whatever the mix of failures. Every failure leaves as a
:class:`~intake_tcia.errors.TCIAError`; no requests or urllib3 exception escapes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.util.retry import Retry

from . import __version__
from ._jsonrows import JSONRows
from .config import Settings
from .errors import (
    TCIAAuthError,
    TCIAConnectionError,
    TCIAHTTPError,
    TCIANotFoundError,
    TCIAResponseError,
)

__all__ = ["Transport", "RetryBudget", "RETRY_STATUSES"]

log = logging.getLogger("intake_tcia")

#: Statuses worth asking again: rate limiting and passing server trouble.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# What NBIA answers (with status 400) for a UID it does not hold or will not show.
_NOT_FOUND_MARKERS = ("not been granted the access", "is not in public domain")
_ERROR_BODY_LIMIT = 64 * 1024
_ERROR_HEAD = 200  # bytes of an unparsable answer quoted in the error
_CHUNK = 1 << 20

#: Rewrites a v4-style request (``base + endpoint``, v4 parameters) into what a server of
#: another flavour expects (see :meth:`intake_tcia.flavours.Flavour.request`).
Route = Callable[[str, Any], tuple[str, Any]]


class RetryBudget:
    """The retries one operation may still make, and how long to wait before each.

    Parameters
    ----------
    settings : Settings
        ``retries`` (how many), ``backoff_factor`` and ``max_backoff`` (seconds).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.used = 0

    @property
    def left(self) -> int:
        """int: retries not yet spent."""
        return self.settings.retries - self.used

    def spend(self, retry_after: float | None = None) -> float | None:
        """Take one retry and return the seconds to wait first, or None when none is left.

        The wait is the server's Retry-After when it sent one, else ``backoff_factor * 2**n``;
        either way at most ``max_backoff``.
        """
        if self.left <= 0:
            return None
        pause = self.settings.backoff_factor * 2**self.used if retry_after is None else retry_after
        self.used += 1
        return min(max(pause, 0.0), self.settings.max_backoff)


class _Sink(Protocol):
    def feed(self, data: bytes) -> None: ...


class _Bytes(bytearray):
    """A sink that keeps every byte."""

    def feed(self, data: bytes) -> None:
        self += data


class _Head:
    """Passes bytes on to a sink, keeping the first few (for error messages) and the count."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.head = b""
        self.size = 0

    def feed(self, data: bytes) -> None:
        if len(self.head) < _ERROR_HEAD:
            self.head += data[: _ERROR_HEAD - len(self.head)]
        self.size += len(data)
        self.sink.feed(data)


def _full_url(url: str, params: Mapping[str, str] | None) -> str:
    """The URL as sent, query included, for error messages."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, params)
    return prepared.url or url


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return Retry().parse_retry_after(value)  # seconds or an HTTP date
    except Exception:  # an unreadable header is no reason to fail; back off as usual
        return None


def _error_for(status: int, text: str, url: str) -> TCIAHTTPError:
    if status in (401, 403):
        return TCIAAuthError(status, text, url)
    if status == 404 or (status == 400 and any(m in text for m in _NOT_FOUND_MARKERS)):
        return TCIANotFoundError(status, text, url)
    return TCIAHTTPError(status, text, url)


class Transport:
    """A pooled HTTP session with timeouts, retries and intake-tcia's error mapping.

    Parameters
    ----------
    settings : Settings
        Timeouts, retry count and backoff, and the number of workers (to size the pool).
    session : requests.Session, optional
        A session to use (proxies, certificates, auth); retries are mounted on it.
    route : callable, optional
        Applied to every request's URL and parameters before it is sent: the one place where
        queries and downloads alike are put into the server's dialect.
    auth : requests.auth.AuthBase, optional
        Credentials for the session (unless it has its own).
    """

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        route: Route | None = None,
        auth: AuthBase | None = None,
    ) -> None:
        self.settings = settings
        self.route = route
        self.session = session or requests.Session()
        if self.session.auth is None:
            self.session.auth = auth
        # Retries are counted here, per operation (RetryBudget), not by urllib3 per request.
        adapter = HTTPAdapter(max_retries=0, pool_maxsize=max(10, 2 * settings.workers))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.setdefault("User-Agent", f"intake-tcia/{__version__}")

    @property
    def timeout(self) -> tuple[float, float]:
        """tuple of float: (connect, read) timeouts in seconds."""
        return (self.settings.connect_timeout, self.settings.read_timeout)

    def budget(self) -> RetryBudget:
        """A fresh :class:`RetryBudget` for one operation."""
        return RetryBudget(self.settings)

    def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
        budget: RetryBudget,
    ) -> requests.Response:
        """One answer with a status below 400, retrying what is worth retrying on ``budget``."""
        if self.route is not None:
            url, params = self.route(url, params)
        while True:
            try:
                response = self.session.request(
                    method, url, params=params, data=data, stream=True, timeout=self.timeout
                )
            except requests.RequestException as exc:
                failure = (
                    "timed out asking" if isinstance(exc, requests.Timeout) else "could not reach"
                )
                error = TCIAConnectionError(f"{failure} {_full_url(url, params)}: {exc}")
                pause = budget.spend()
                if pause is None:
                    raise error from exc
            else:
                if response.status_code < 400:
                    return response
                pause = budget.spend(_retry_after(response))
                if response.status_code not in RETRY_STATUSES or pause is None:
                    raise self._error(response)
                error = self._error(response)
            log.warning(
                "%s; retry %d of %d in %.2f s", error, budget.used, budget.settings.retries, pause
            )
            time.sleep(pause)

    @staticmethod
    def _error(response: requests.Response) -> TCIAHTTPError:
        with response:
            try:
                body = next(response.iter_content(_ERROR_BODY_LIMIT), b"")
            except requests.RequestException:
                body = b""
        return _error_for(response.status_code, body.decode("utf-8", "replace"), response.url)

    @contextmanager
    def stream(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        *,
        budget: RetryBudget | None = None,
    ) -> Iterator[requests.Response]:
        """Open a GET whose body is read by the caller (``iter_content``); closed on exit.

        Errors in the body itself (a reset, a short read) surface as
        :class:`TCIAConnectionError` from :meth:`iter_body`; a caller that retries them spends
        the same ``budget`` it passed here.
        """
        response = self._send("GET", url, params, None, budget or self.budget())
        try:
            yield response
        finally:
            response.close()

    def iter_body(self, response: requests.Response, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """Yield the body of a streamed response, mapping transport failures to TCIA errors."""
        try:
            yield from response.iter_content(chunk_size)
        except requests.RequestException as exc:
            raise TCIAConnectionError(f"connection lost reading {response.url}: {exc}") from exc

    def fetch(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> tuple[bytearray, str]:
        """The whole body and content type of an answer (see :meth:`_receive`)."""
        received, content_type = self._receive(method, url, params, data, _Bytes)
        return received.sink, content_type

    def get_json(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> list[Any]:
        """The rows of a JSON answer, parsed as they arrive (``[]`` for NBIA's empty body)."""
        method = "POST" if data else "GET"
        received, content_type = self._receive(method, url, params, data, JSONRows)
        try:
            return received.sink.close()
        except ValueError as exc:
            raise TCIAResponseError(
                f"expected JSON from {url}, got {content_type or 'no content type'}: "
                f"{received.head.decode('utf-8', 'replace')!r}"
            ) from exc

    def _receive(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
        sink: Callable[[], _Sink],
    ) -> tuple[_Head, str]:
        """Feed a whole answer into a new ``sink()``, asking again when a body is cut off mid-way.

        The body must arrive within ``settings.query_timeout`` seconds in all.
        """
        budget = self.budget()
        while True:
            response = self._send(method, url, params, data, budget)
            target = _Head(sink())
            try:
                deadline = time.monotonic() + self.settings.query_timeout
                for chunk in self.iter_body(response):
                    target.feed(chunk)
                    if time.monotonic() > deadline:
                        raise TCIAResponseError(
                            f"{response.url} was still sending after "
                            f"{self.settings.query_timeout:g} s ({target.size} bytes); giving up"
                        )
                return target, response.headers.get("Content-Type", "")
            except TCIAConnectionError as exc:
                pause = budget.spend()
                if pause is None:
                    raise
                log.warning("%s; retrying in %.2f s", exc, pause)
                time.sleep(pause)
            finally:
                response.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

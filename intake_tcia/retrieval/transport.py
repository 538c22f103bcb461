"""The one HTTP transport of intake-tcia: a pooled session, timeouts, retries, error mapping.

Nothing else in the package talks HTTP. Each operation (a query, a series download) gets one
:class:`RetryBudget` of ``settings.retries`` retries, which everything that can go wrong in it
draws from: 429 and 5xx answers (waiting as Retry-After says, up to ``max_backoff``), refused or
timed-out connections, and bodies cut off mid-way. So an operation never makes more than
``1 + retries`` requests, whatever the mix of failures. Every failure leaves as a
:class:`~intake_tcia.errors.TCIAError` whose ``retryable`` flag says whether asking again may help;
:meth:`RetryBudget.run` is the one loop that reads it, for single requests, whole answers and whole
series downloads alike. No requests or urllib3 exception escapes.

What cannot mend itself fails at once, unretried: an unknown host name, a refused connection to
a host that has never answered (a mistyped URL, not a restarting server), a URL of another
scheme, 4xx answers other than 408 and 429, too many redirects. Retries are logged at INFO on
the ``intake_tcia`` logger.

Bounds: the status line and headers must arrive within ``read_timeout`` in all (not only
between two bytes); a metadata answer must arrive within ``query_timeout`` and hold at most
``max_answer_bytes``; an answer cut inside its headers (even after a complete header line) is a
lost connection, retried; a body sent compressed may inflate at most
``max_decompression_ratio`` times. Redirects are followed here: one hop is part of a request,
each further one spends a retry (a chain makes at most ``2 + retries`` requests, and at most
:data:`MAX_REDIRECTS` hops), a hop back to a URL already asked is refused as a loop; every hop is
asked anew so the credential policy of :mod:`intake_tcia.nbia.auth` decides for its own URL.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, quote_plus, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from .. import __version__
from .._jsonrows import JSONRows
from ..config import Settings
from ..errors import (
    RETRY_STATUSES,
    TCIAAuthError,
    TCIAConnectionError,
    TCIAError,
    TCIAHTTPError,
    TCIAIntegrityError,
    TCIANotFoundError,
    TCIAResponseError,
)

__all__ = ["Transport", "RetryBudget", "RETRY_STATUSES", "MAX_REDIRECTS"]

log = logging.getLogger("intake_tcia")

#: Redirects followed for one request before giving up.
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

# What NBIA answers (with status 400) for a UID it does not hold or will not show.
_NOT_FOUND_MARKERS = ("not been granted the access", "is not in public domain")
_ERROR_BODY_LIMIT = 64 * 1024
_ERROR_HEAD = 200  # bytes of an unparsable answer quoted in the error
_CHUNK = 1 << 20
_RATIO_FROM = 1 << 20  # bytes inflated before the ratio is judged

#: Rewrites a v4-style request (``base + endpoint``, v4 parameters) into what a server of
#: another flavour expects (see :meth:`intake_tcia.nbia.flavours.Flavour.request`).
Route = Callable[[str, Any], tuple[str, Any]]
T = TypeVar("T")


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
        self._lock = threading.Lock()  # one series' parallel GETs share a budget

    @property
    def left(self) -> int:
        """int: retries not yet spent."""
        return self.settings.retries - self.used

    def spend(self, retry_after: float | None = None) -> float | None:
        """Take one retry and return the seconds to wait first, or None when none is left.

        The wait is the server's Retry-After when it sent one, else ``backoff_factor * 2**n``;
        either way at most ``max_backoff``.
        """
        with self._lock:
            if self.left <= 0:
                return None
            n, self.used = self.used, self.used + 1
        pause = self.settings.backoff_factor * 2**n if retry_after is None else retry_after
        return min(max(pause, 0.0), self.settings.max_backoff)

    def run(self, attempt: Callable[[], T], *, deadline: float | None = None) -> T:
        """``attempt()`` until it returns, asking again after each ``retryable`` TCIA error
        while retries are left (and, with ``deadline``, monotonic seconds, while the wait ends
        before it); the last error is raised as it is.

        The one retry loop of the package: requests, whole answers and whole series downloads
        run on it, nested on one budget, so an operation never makes more than ``1 + retries``
        requests.
        """
        while True:
            try:
                return attempt()
            except TCIAError as exc:
                if not exc.retryable:
                    raise
                pause = self.spend(getattr(exc, "retry_after", None))
                if pause is not None and deadline is not None and (
                    time.monotonic() + pause > deadline
                ):
                    pause = None  # no time left for another attempt
                if pause is None:
                    raise
                log.info("%s; retry %d of %d in %.2f s", exc, self.used, self.settings.retries,
                         pause)
            time.sleep(pause)


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

    @property
    def held(self) -> int:
        """Bytes the sink's parsed rows hold, where it counts them."""
        return getattr(self.sink, "held", 0)


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


def _error_for(status: int, text: str, url: str, retry_after: float | None) -> TCIAHTTPError:
    if status in (401, 403):
        return TCIAAuthError(status, text, url)
    if status == 404 or (status == 400 and any(m in text for m in _NOT_FOUND_MARKERS)):
        return TCIANotFoundError(status, text, url)
    return TCIAHTTPError(status, text, url, retry_after)


class _HeaderDeadline:
    """Mixin of urllib3 connections: the status line and headers must arrive within the read
    timeout in all, however slowly they trickle (the socket timeout bounds only each wait)."""

    timeout: Any
    sock: socket.socket | None

    def getresponse(self) -> Any:
        limit = self.timeout if isinstance(self.timeout, (int, float)) else None
        expired = threading.Event()

        def cut() -> None:
            expired.set()
            if self.sock is not None:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(limit, cut) if limit else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            response = super().getresponse()  # type: ignore[misc]
        except Exception:  # OSError, or http.client's BadStatusLine on a status line cut short
            if expired.is_set():
                raise TimeoutError(f"headers not received within {limit:g} s") from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if expired.is_set():
            response.close()
            raise TimeoutError(f"headers not received within {limit:g} s")
        return response


class _LastLine:
    """A response's file, remembering the last line read (to tell headers cut short)."""

    def __init__(self, fp: Any) -> None:
        self.fp, self.last = fp, b"\r\n"

    def readline(self, limit: int = -1) -> bytes:
        self.last = self.fp.readline(limit)
        return self.last

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fp, name)


class _WholeHeaders(http.client.HTTPResponse):
    """http.client's response, refusing headers that end with the connection instead of a
    blank line (http.client takes them as complete: an empty 200 for a cut answer)."""

    def begin(self) -> None:
        fp = self.fp
        self.fp = _LastLine(fp)
        try:
            super().begin()
            cut = self.fp.last == b""
        finally:
            self.fp = fp
        if cut:
            self.close()
            raise http.client.RemoteDisconnected("the answer ended inside its headers")


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = type("_Connection", (_HeaderDeadline, HTTPConnection),
                         {"response_class": _WholeHeaders})


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = type("_SConnection", (_HeaderDeadline, HTTPSConnection),
                         {"response_class": _WholeHeaders})


class _Adapter(HTTPAdapter):
    """requests' adapter with :class:`_HeaderDeadline` connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


_CONCEALED_LENGTH = 4


def conceal(text: str, auth: object) -> str:
    """``text`` (a server's message, to be shown in an error) with every secret ``auth`` holds
    replaced by ``***``, as sent and URL-encoded: a server that echoes a request back cannot
    put a password, api_key or token into errors, logs or the CLI's output. Secrets under
    :data:`_CONCEALED_LENGTH` characters are left (they would mask ordinary words)."""
    for secret in getattr(auth, "secrets", list)():
        if len(secret) < _CONCEALED_LENGTH:
            continue
        for form in {secret, quote_plus(secret), quote(secret, safe="")}:
            text = text.replace(form, "***")
    return text


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port


def _cause(exc: BaseException) -> BaseException | None:
    """The urllib3 reason inside a requests exception (MaxRetryError.reason), if any."""
    inner = exc.args[0] if exc.args else None
    return getattr(inner, "reason", inner) if isinstance(inner, BaseException) else None


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
        adapter = _Adapter(max_retries=0, pool_maxsize=max(10, 2 * settings.workers))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.setdefault("User-Agent", f"intake-tcia/{__version__}")
        self._answered: set[tuple[str, str, int | None]] = set()  # origins that have answered

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
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """One answer with a status below 400, retrying what is worth retrying on ``budget``."""
        if self.route is not None:
            url, params = self.route(url, params)

        def once() -> requests.Response:
            try:
                response = self._follow(method, url, params, data, headers, budget)
            except requests.RequestException as exc:
                raise self._connection_error(exc, url, params) from exc
            if response.status_code >= 400:
                raise self._error(response)
            return response

        return budget.run(once)

    def _follow(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
        headers: Mapping[str, str] | None = None,
        budget: RetryBudget | None = None,
    ) -> requests.Response:
        """One answer that is no redirect: redirects are followed here, each hop a new request
        (so credentials are chosen for its own URL), at most :data:`MAX_REDIRECTS`. The first
        hop is part of the request; each further one spends a retry of ``budget`` (so a chain
        makes at most ``2 + retries`` requests), and a hop back to a URL already asked is a
        loop, refused at once."""
        first, asked = url, {_full_url(url, params)}
        for _ in range(MAX_REDIRECTS + 1):
            response = self.session.request(
                method, url, params=params, data=data, headers=headers, stream=True,
                timeout=self.timeout, allow_redirects=False,
            )
            self._answered.add(_origin(url))
            if not response.headers:
                response.close()
                raise TCIAConnectionError(
                    f"the answer from {response.url} ended inside its headers")
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECTS or location is None:
                return response
            response.close()
            url, params = urljoin(response.url, location), None
            spent = len(asked) > 1 and budget is not None and budget.spend() is None
            if url in asked or spent:
                raise TCIAHTTPError(
                    response.status_code,
                    f"redirects that {'loop' if url in asked else 'go on'}: {len(asked)} "
                    f"request(s) made, at most 2 + retries; last to {url}",
                    _full_url(first, None),
                )
            asked.add(url)
            if response.status_code in (301, 302, 303) and method != "GET":
                method, data = "GET", None
        raise TCIAHTTPError(
            response.status_code, f"more than {MAX_REDIRECTS} redirects (a loop?); last to {url}",
            _full_url(first, None),
        )

    def _connection_error(
        self, exc: requests.RequestException, url: str, params: Mapping[str, str] | None
    ) -> TCIAConnectionError:
        """The TCIA error for a failed request, not ``retryable`` when asking again cannot help."""
        cause = _cause(exc)
        full = _full_url(url, params)
        permanent = None
        if isinstance(exc, (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
                            requests.exceptions.MissingSchema)):
            permanent = "cannot ask"
        elif isinstance(cause, urllib3.exceptions.NameResolutionError):
            permanent = f"unknown host {urlsplit(url).hostname!r}: cannot ask"
        elif (
            isinstance(cause, urllib3.exceptions.NewConnectionError)
            and isinstance(cause.__cause__, ConnectionRefusedError)
            and _origin(url) not in self._answered
        ):
            permanent = "connection refused: nothing listens at"
        failure = permanent or (
            "timed out asking" if isinstance(exc, requests.Timeout) else "could not reach"
        )
        message = f"{failure} {full}" if permanent else f"{failure} {full}: {exc}"
        return TCIAConnectionError(message, retryable=permanent is None)

    def _error(self, response: requests.Response) -> TCIAHTTPError:
        with response:
            try:
                body = next(response.iter_content(_ERROR_BODY_LIMIT), b"")
            except requests.RequestException:
                body = b""
        text = conceal(body.decode("utf-8", "replace"), self.session.auth)  # echoed secrets
        return _error_for(response.status_code, text, response.url, _retry_after(response))

    @contextmanager
    def stream(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        *,
        budget: RetryBudget | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[requests.Response]:
        """Open a GET whose body is read by the caller (:meth:`iter_body`); closed on exit.

        ``headers`` are sent with it (a ``Range`` for part of an object).

        Errors in the body itself (a reset, a short read) surface as
        :class:`TCIAConnectionError` from :meth:`iter_body`; a caller that retries them spends
        the same ``budget`` it passed here.
        """
        response = self._send("GET", url, params, None, budget or self.budget(), headers)
        try:
            yield response
        finally:
            response.close()

    def iter_body(
        self,
        response: requests.Response,
        chunk_size: int = _CHUNK,
        *,
        deadline: float | None = None,
        max_ratio: float | None = None,
    ) -> Iterator[bytes]:
        """Yield the body of a streamed response as it arrives, mapping transport failures to
        TCIA errors.

        Each read returns what is there (at most ``chunk_size`` bytes), so ``deadline``
        (monotonic seconds; :class:`TCIAResponseError` once passed) holds however slowly the
        bytes come. A body sent compressed may inflate at most ``max_ratio`` (default
        ``settings.max_decompression_ratio``) times, once past 1 MiB
        (:class:`TCIAIntegrityError`, a decompression bomb).
        """
        raw = response.raw
        ratio = self.settings.max_decompression_ratio if max_ratio is None else max_ratio
        inflated = 0
        try:
            while chunk := raw.read1(chunk_size, decode_content=True):
                inflated += len(chunk)
                if inflated > _RATIO_FROM and inflated > ratio * max(raw.tell(), 1):
                    raise TCIAIntegrityError(
                        f"{response.url} sent {raw.tell()} bytes compressed that inflate to over "
                        f"{inflated} (a decompression bomb; max_decompression_ratio {ratio:g})",
                        retryable=False)
                yield chunk
                if deadline is not None and time.monotonic() > deadline:
                    raise TCIAResponseError(f"{response.url} was still sending at its deadline")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TCIAConnectionError(f"connection lost reading {response.url}: {exc}") from exc

    def fetch(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> tuple[bytearray, str]:
        """The whole body and content type of an answer (see :meth:`_receive`); at most
        ``limit`` bytes where the caller knows what the answer can hold (never more than
        ``max_answer_bytes``)."""
        received, content_type = self._receive(method, url, params, data, _Bytes, limit)
        return received.sink, content_type

    def get_json(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        parser: Callable[[], Any] = JSONRows,
    ) -> Any:
        """A JSON answer parsed as it arrives by a new ``parser()`` (a :class:`JSONRows` by
        default: the list of rows, ``[]`` for NBIA's empty body); what its ``close()`` gives."""
        method = "POST" if data else "GET"
        try:
            received, content_type = self._receive(method, url, params, data, parser)
            try:
                return received.sink.close()
            except ValueError as exc:
                raise TCIAResponseError(
                    f"expected JSON from {url}, got {content_type or 'no content type'}: "
                    f"{received.head.decode('utf-8', 'replace')!r}"
                ) from exc
        except RecursionError:  # arrays in arrays deeper than any parser goes
            raise TCIAResponseError(f"{url} sent JSON nested too deeply to parse") from None

    def _receive(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
        sink: Callable[[], _Sink],
        bound: int | None = None,
    ) -> tuple[_Head, str]:
        """Feed a whole answer into a new ``sink()``, asking again when a body is cut off mid-way.

        Each answer must arrive within ``settings.query_timeout`` seconds in all and hold at
        most ``settings.max_answer_bytes`` bytes (or ``bound``, when lower), as sent and as
        parsed.
        """
        budget = self.budget()
        limit = min(self.settings.max_answer_bytes, bound or self.settings.max_answer_bytes)
        what = "max_answer_bytes" if limit == self.settings.max_answer_bytes else (
            "all that was asked for can hold")

        def once() -> tuple[_Head, str]:
            response = self._send(method, url, params, data, budget)
            deadline = time.monotonic() + self.settings.query_timeout
            target = _Head(sink())
            try:
                for chunk in self.iter_body(response, deadline=deadline):
                    target.feed(chunk)
                    if target.size > limit:
                        raise TCIAResponseError(
                            f"{response.url} sent more than {limit} bytes ({what}); giving up"
                        )
                    if target.held > limit:
                        raise TCIAResponseError(
                            f"{response.url} sent rows that hold more than {limit} bytes once "
                            "parsed (max_answer_bytes); giving up"
                        )
                return target, response.headers.get("Content-Type", "")
            finally:
                response.close()

        return budget.run(once)

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

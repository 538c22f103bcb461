"""The one HTTP transport of intake-tcia: a pooled session, timeouts, retries, error mapping.

Nothing else in the package talks HTTP. Retries on 429, 5xx and connection errors live in the
session (urllib3 ``Retry`` with exponential backoff, honouring Retry-After up to ``max_backoff``);
a body cut off mid-way is retried here, under the same count. Every failure leaves as a
:class:`~intake_tcia.errors.TCIAError`; no requests or urllib3 exception escapes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from . import __version__
from .config import Settings
from .errors import (
    TCIAAuthError,
    TCIAConnectionError,
    TCIAHTTPError,
    TCIANotFoundError,
    TCIAResponseError,
)

__all__ = ["Transport", "RETRY_STATUSES"]

log = logging.getLogger("intake_tcia")

#: Statuses worth asking again: rate limiting and passing server trouble.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# What NBIA answers (with status 400) for a UID it does not hold or will not show.
_NOT_FOUND_MARKERS = ("not been granted the access", "is not in public domain")
_ERROR_BODY_LIMIT = 64 * 1024
_CHUNK = 1 << 20


class _CappedRetry(Retry):
    """A urllib3 ``Retry`` that waits for a server's Retry-After at most ``backoff_max`` seconds."""

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.backoff_max)


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
    """

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        retry = _CappedRetry(
            total=settings.retries,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=None,  # every call here is a read, POST getSeriesMetadata included
            backoff_factor=settings.backoff_factor,
            backoff_max=settings.max_backoff,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=max(10, 2 * settings.workers))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.setdefault("User-Agent", f"intake-tcia/{__version__}")

    @property
    def timeout(self) -> tuple[float, float]:
        """tuple of float: (connect, read) timeouts in seconds."""
        return (self.settings.connect_timeout, self.settings.read_timeout)

    def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
    ) -> requests.Response:
        try:
            response = self.session.request(
                method, url, params=params, data=data, stream=True, timeout=self.timeout
            )
        except requests.Timeout as exc:
            raise TCIAConnectionError(f"timed out asking {url}: {exc}") from exc
        except requests.RequestException as exc:
            raise TCIAConnectionError(f"could not reach {url}: {exc}") from exc
        if response.status_code >= 400:
            with response:
                try:
                    body = next(response.iter_content(_ERROR_BODY_LIMIT), b"")
                except requests.RequestException:
                    body = b""
            raise _error_for(response.status_code, body.decode("utf-8", "replace"), response.url)
        return response

    @contextmanager
    def stream(
        self, url: str, params: Mapping[str, str] | None = None
    ) -> Iterator[requests.Response]:
        """Open a GET whose body is read by the caller (``iter_content``); closed on exit.

        Errors in the body itself (a reset, a short read) surface as
        :class:`TCIAConnectionError` from :meth:`iter_body`.
        """
        response = self._send("GET", url, params, None)
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
        """The whole body and content type of an answer, retrying bodies cut off mid-way.

        The body must arrive within ``settings.query_timeout`` seconds in all.
        """
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            response = self._send(method, url, params, data)
            try:
                return self._read_all(response), response.headers.get("Content-Type", "")
            except TCIAConnectionError as exc:
                if attempt + 1 == attempts:
                    raise
                pause = min(self.settings.backoff_factor * 2**attempt, self.settings.max_backoff)
                log.warning("%s; retrying in %.1f s", exc, pause)
                time.sleep(pause)
            finally:
                response.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_all(self, response: requests.Response) -> bytearray:
        deadline = time.monotonic() + self.settings.query_timeout
        body = bytearray()
        for chunk in self.iter_body(response):
            body += chunk
            if time.monotonic() > deadline:
                raise TCIAResponseError(
                    f"{response.url} was still sending after {self.settings.query_timeout:g} s "
                    f"({len(body)} bytes); giving up"
                )
        return body

    def get_json(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> list[Any]:
        """The rows of a JSON answer: a list (``[]`` for NBIA's empty body)."""
        body, content_type = self.fetch("POST" if data else "GET", url, params=params, data=data)
        if not body or body.isspace():  # NBIA's "no rows" (isspace stops early; strip copies)
            return []
        try:
            rows = json.loads(body)
        except ValueError as exc:
            raise TCIAResponseError(
                f"expected JSON from {url}, got {content_type or 'no content type'}: "
                f"{body[:200].decode('utf-8', 'replace')!r}"
            ) from exc
        if isinstance(rows, dict):
            return [rows]
        if not isinstance(rows, list):
            raise TCIAResponseError(f"expected a JSON list from {url}, got {type(rows).__name__}")
        return rows

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

"""Credentials on requests: the legacy ``api_key`` header and NBIA OAuth Bearer tokens.

Both are :class:`requests.auth.AuthBase` objects set on the transport's session, so every request
(queries and downloads alike) carries them. Secrets live only in these objects and the settings;
neither shows them in ``repr`` and neither can be pickled with them.

The one credential policy: a secret goes only to the scheme, host and port it was configured for,
under that host's API path (:func:`same_origin`). The transport follows redirects itself and
asks this object again for every hop, so a redirect to another origin goes without credentials.
Tokens are asked only of the token URL of a configured host, never followed through redirects.
The ``username``/``password`` login belongs to ``api_url``; the NLST host gets the
``nlst_username``/``nlst_password`` login, else the guest one.

Tokens (``POST .../nbia-api/oauth/token``, one per host, since NLST has its own): asked with the
password grant on first use, renewed with the refresh-token grant shortly before they expire
(a new password grant if the refresh is refused), and renewed once more, with the request sent
again, when the server answers 401.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from ..config import Settings
from ..errors import TCIAAuthError, TCIAConnectionError, TCIAHTTPError
from ..retrieval.transport import conceal

__all__ = [
    "ApiKeyAuth",
    "TokenAuth",
    "auth_for",
    "token_url",
    "same_origin",
    "GUEST_USERNAME",
    "CLIENT_ID",
]

GUEST_USERNAME = "nbia_guest"
CLIENT_ID = "NBIA"
#: A token is renewed this long before it expires (at most; a tenth of its life when shorter).
RENEW_MARGIN = 60.0
_TOKEN_ANSWER_LIMIT = 64 * 1024  # bytes of a token answer read (real ones are ~2 KB)


class _Unpicklable:
    """Refuses to be pickled (it holds secrets)."""

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} holds secrets and cannot be pickled")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the port filled in from the scheme."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def _prefix(base_url: str) -> str:
    """The path prefix of a host's API (``.../services/`` where there is one, so shared carts
    under ``/v1/`` of a ``/v4/`` host count too)."""
    path = urlsplit(base_url).path
    root, found, _ = path.partition("/services/")
    return root + found if found else path


def same_origin(url: str, base_url: str) -> bool:
    """bool: ``url`` has the scheme, host and port of ``base_url`` and lies under its API path."""
    return _origin(url) == _origin(base_url) and urlsplit(url).path.startswith(_prefix(base_url))


def _host_of(url: str, hosts: tuple[str, ...]) -> str | None:
    """The configured base URL that ``url`` belongs to (:func:`same_origin`), if any."""
    return next((h for h in hosts if same_origin(url, h)), None)


class ApiKeyAuth(_Unpicklable, AuthBase):
    """The ``api_key`` header of the legacy TCIA REST API, on requests to ``hosts`` only."""

    def __init__(self, api_key: str, hosts: tuple[str, ...]) -> None:
        self._key = api_key
        self._hosts = hosts

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("api_key", None)
        if _host_of(r.url or "", self._hosts):
            r.headers["api_key"] = self._key
        return r

    def __repr__(self) -> str:
        return "ApiKeyAuth(api_key=***)"

    def secrets(self) -> list[str]:
        """list of str: what :func:`conceal` hides."""
        return [self._key]


def token_url(url: str) -> str:
    """str: the OAuth token endpoint of the NBIA that serves ``url`` (``.../nbia-api/oauth/token``).

    Raises
    ------
    ValueError
        If ``url`` has no ``/services/`` part to find the NBIA root by.
    """
    root, found, _ = url.partition("/services/")
    if not found:
        raise ValueError(f"cannot tell the NBIA token endpoint of {url}")
    return root + "/oauth/token"


def _header_safe(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and value.isprintable() and value.isascii()


class _Token:
    """One host's access token, refresh token and expiry (monotonic seconds).

    Raises ValueError for an answer that is no usable token (see :meth:`TokenAuth._ask`).
    """

    def __init__(self, answer: dict[str, Any]) -> None:
        self.access = answer["access_token"]
        self.refresh = answer.get("refresh_token")
        if not _header_safe(self.access) or " " in self.access:
            raise ValueError("the access_token is not a printable ASCII word")
        if self.refresh is not None and not _header_safe(self.refresh):
            raise ValueError("the refresh_token is not printable ASCII")
        expires_in = answer.get("expires_in")
        life = float(expires_in) if expires_in not in (None, "", 0) else math.inf
        if math.isnan(life) or life <= 0:
            raise ValueError(f"expires_in is not a number of seconds > 0: {str(expires_in)[:40]!r}")
        self.renew_at = time.monotonic() + life - min(RENEW_MARGIN, life / 10)


class TokenAuth(_Unpicklable, AuthBase):
    """Bearer tokens from NBIA's OAuth endpoint, obtained, renewed and retried as needed.

    Parameters
    ----------
    session : requests.Session
        What token requests are sent with (its proxies and certificates).
    settings : Settings
        The timeouts.
    logins : dict of str to (str, str)
        Base URL of each host that wants tokens -> its (username, password); no other request
        gets a token, and each login is posted only to its own host's token URL.
    """

    def __init__(
        self,
        session: requests.Session,
        settings: Settings,
        logins: dict[str, tuple[str, str]],
    ) -> None:
        self._hosts = tuple(logins)
        self._logins = {token_url(h): login for h, login in logins.items()}
        self._session = session
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenAuth(hosts={len(self._hosts)}, username=***, password=***)"

    def secrets(self) -> list[str]:
        """list of str: the passwords and the tokens held (what :func:`conceal` hides)."""
        tokens = [(t.access, t.refresh) for t in list(self._tokens.values())]
        return [p for _, p in self._logins.values()] + [s for pair in tokens for s in pair if s]

    def _token_url_of(self, url: str) -> str | None:
        host = _host_of(url, self._hosts)
        return token_url(host) if host else None

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        url = self._token_url_of(r.url or "")
        if url is not None:
            r.headers["Authorization"] = "Bearer " + self.token(url)
            r.register_hook("response", self._retry_401)
        return r

    def token(self, url: str, *, stale: str | None = None) -> str:
        """A valid access token for the token endpoint ``url``.

        ``stale`` is a token the server refused: it is renewed unless another thread already did.
        """
        with self._lock:
            token = self._tokens.get(url)
            if token is not None and token.access != stale and time.monotonic() < token.renew_at:
                return token.access
            answer = None
            if token is not None and token.refresh:
                try:
                    answer = self._ask(url, grant_type="refresh_token", refresh_token=token.refresh)
                except TCIAAuthError:
                    answer = None  # refused or expired: log in again
            if answer is None:
                username, password = self._logins[url]
                answer = self._ask(url, grant_type="password", username=username,
                                   password=password)
            self._tokens[url] = answer
            return answer.access

    def _ask(self, url: str, **form: str) -> _Token:
        """One token request to a configured token URL; redirects are not followed."""
        if url not in self._logins:  # pragma: no cover - every caller passes a configured URL
            raise AssertionError(f"{url} is no configured token URL")
        try:
            response = self._session.post(
                url, data={**form, "client_id": CLIENT_ID}, timeout=self._timeout,
                auth=_no_auth, allow_redirects=False, stream=True,
            )
        except requests.RequestException as exc:
            raise TCIAConnectionError(f"could not reach {url} for a token: {exc}") from exc
        with response:
            body = response.raw.read(_TOKEN_ANSWER_LIMIT + 1, decode_content=True)
        text = body[:_TOKEN_ANSWER_LIMIT].decode("utf-8", "replace")
        if response.status_code >= 300:
            kind = TCIAAuthError if response.status_code < 500 else TCIAHTTPError
            text = conceal(text, self)  # a server may echo the form back
            raise kind(response.status_code, f"{form['grant_type']} grant refused: {text[:500]}",
                       url)
        try:
            return _Token(json.loads(text))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            reason = str(exc) if isinstance(exc, ValueError) and "expires_in" in str(exc) else ""
            raise TCIAAuthError(
                response.status_code, f"no usable access_token in the token answer {reason}", url
            ) from None

    def _retry_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        """On a 401, renew the token and send the request once more."""
        request = response.request
        if response.status_code != 401 or getattr(request, "_tcia_retried", False):
            return response
        url = self._token_url_of(request.url or "")
        if url is None:
            return response
        refused = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        response.raw.read(_TOKEN_ANSWER_LIMIT, decode_content=False)
        response.close()
        again = request.copy()
        again.headers["Authorization"] = "Bearer " + self.token(url, stale=refused)
        again._tcia_retried = True  # type: ignore[attr-defined]
        retried = response.connection.send(again, **kwargs)
        retried.history.append(response)
        retried.request = again
        return retried


def _no_auth(r: requests.PreparedRequest) -> requests.PreparedRequest:
    """No credentials (token requests must not go through :class:`TokenAuth` itself)."""
    return r


class _Both(AuthBase):
    """Two kinds of credentials, each on its own hosts."""

    def __init__(self, *auths: AuthBase) -> None:
        self._auths = auths

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        for auth in self._auths:
            r = auth(r)
        return r

    def secrets(self) -> list[str]:
        """list of str: the secrets of each kind of credentials."""
        return [s for auth in self._auths for s in auth.secrets()]


def auth_for(
    schemes: dict[str, str], session: requests.Session, settings: Settings
) -> AuthBase | None:
    """The credentials the hosts want, or None when none wants any.

    Parameters
    ----------
    schemes : dict of str to str
        Base URL of each host -> its flavour's ``auth`` (``"none"``, ``"token"``, ``"api_key"``).
        A username for a host asks for tokens from it even when its flavour wants none. The
        ``api_key`` goes to the hosts of the legacy flavour only (never to TCIA's default NLST
        host, which is v4).

    Raises
    ------
    ValueError
        For a legacy host without an ``api_key``.
    """
    logins = {
        settings.api_url: (settings.username, settings.password),
        settings.nlst_api_url: (settings.nlst_username, settings.nlst_password),
    }
    key_hosts = tuple(h for h, scheme in schemes.items() if scheme == "api_key")
    token_logins = {
        h: (logins[h][0] or GUEST_USERNAME, logins[h][1] or "")
        for h, scheme in schemes.items()
        if scheme == "token" or (scheme == "none" and logins[h][0])
    }
    auths: list[AuthBase] = []
    if key_hosts:
        if not settings.api_key:
            raise ValueError(
                "the legacy TCIA REST API needs an api_key (the api_key setting or "
                "INTAKE_TCIA_API_KEY)"
            )
        auths.append(ApiKeyAuth(settings.api_key, key_hosts))
    if token_logins:
        auths.append(TokenAuth(session, settings, token_logins))
    if len(auths) > 1:
        return _Both(*auths)
    return auths[0] if auths else None

"""Credentials on requests: the legacy ``api_key`` header and NBIA OAuth Bearer tokens.

Both are :class:`requests.auth.AuthBase` objects set on the transport's session, so every request
(queries and downloads alike) carries them. Secrets live only in these objects and the settings;
neither shows them in ``repr`` and neither can be pickled with them.

Tokens (``POST .../nbia-api/oauth/token``, one per host, since NLST has its own): asked with the
password grant on first use, renewed with the refresh-token grant shortly before they expire
(a new password grant if the refresh is refused), and renewed once more, with the request sent
again, when the server answers 401.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import requests
from requests.auth import AuthBase

from .config import Settings
from .errors import TCIAAuthError, TCIAConnectionError, TCIAHTTPError

__all__ = ["ApiKeyAuth", "TokenAuth", "auth_for", "token_url", "GUEST_USERNAME", "CLIENT_ID"]

GUEST_USERNAME = "nbia_guest"
CLIENT_ID = "NBIA"
#: A token is renewed this long before it expires (at most; a tenth of its life when shorter).
RENEW_MARGIN = 60.0


class _Unpicklable:
    """Refuses to be pickled (it holds secrets)."""

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} holds secrets and cannot be pickled")


def _prefix(base_url: str) -> str:
    """The URL prefix of a host's API (``.../services/`` where there is one, so shared carts
    under ``/v1/`` of a ``/v4/`` host count too)."""
    root, found, _ = base_url.partition("/services/")
    return root + found if found else base_url


class ApiKeyAuth(_Unpicklable, AuthBase):
    """The ``api_key`` header of the legacy TCIA REST API, on requests to ``hosts`` only."""

    def __init__(self, api_key: str, hosts: tuple[str, ...]) -> None:
        self._key = api_key
        self._prefixes = tuple(_prefix(h) for h in hosts)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if (r.url or "").startswith(self._prefixes):
            r.headers["api_key"] = self._key
        return r

    def __repr__(self) -> str:
        return "ApiKeyAuth(api_key=***)"


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


class _Token:
    """One host's access token, refresh token and expiry (monotonic seconds)."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.access = str(answer["access_token"])
        self.refresh = answer.get("refresh_token")
        life = float(answer.get("expires_in") or 0) or float("inf")
        self.renew_at = time.monotonic() + life - min(RENEW_MARGIN, life / 10)


class TokenAuth(_Unpicklable, AuthBase):
    """Bearer tokens from NBIA's OAuth endpoint, obtained, renewed and retried as needed.

    Parameters
    ----------
    session : requests.Session
        What token requests are sent with (its proxies and certificates).
    settings : Settings
        ``username`` and ``password`` (default: the guest login) and the timeouts.
    hosts : tuple of str
        Base URLs of the hosts that want tokens (no other request gets one).
    """

    def __init__(
        self, session: requests.Session, settings: Settings, hosts: tuple[str, ...]
    ) -> None:
        self._prefixes = tuple(_prefix(h) for h in hosts)
        self._session = session
        self._username = settings.username or GUEST_USERNAME
        self._password = settings.password or ""
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenAuth(username={self._username!r}, password=***)"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if (r.url or "").startswith(self._prefixes):
            r.headers["Authorization"] = "Bearer " + self.token(token_url(r.url or ""))
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
                answer = self._ask(url, grant_type="password", username=self._username,
                                   password=self._password)
            self._tokens[url] = _Token(answer)
            return self._tokens[url].access

    def _ask(self, url: str, **form: str) -> dict[str, Any]:
        try:
            response = self._session.post(
                url, data={**form, "client_id": CLIENT_ID}, timeout=self._timeout,
                auth=_no_auth,
            )
        except requests.RequestException as exc:
            raise TCIAConnectionError(f"could not reach {url} for a token: {exc}") from exc
        with response:
            text = response.text
        if response.status_code >= 400:
            kind = TCIAAuthError if response.status_code in (400, 401, 403) else TCIAHTTPError
            raise kind(response.status_code, f"{form['grant_type']} grant refused: {text[:500]}",
                       url)
        try:
            answer = json.loads(text)
            answer["access_token"]
        except (ValueError, KeyError, TypeError):
            raise TCIAAuthError(response.status_code, "no access_token in the token answer",
                                url) from None
        return answer

    def _retry_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        """On a 401, renew the token and send the request once more."""
        request = response.request
        if response.status_code != 401 or getattr(request, "_tcia_retried", False):
            return response
        refused = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        response.content  # noqa: B018 - read the body so the connection can be reused
        response.close()
        again = request.copy()
        again.headers["Authorization"] = "Bearer " + self.token(
            token_url(request.url or ""), stale=refused
        )
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


def auth_for(
    schemes: dict[str, str], session: requests.Session, settings: Settings
) -> AuthBase | None:
    """The credentials the hosts want, or None when none wants any.

    Parameters
    ----------
    schemes : dict of str to str
        Base URL of each host -> its flavour's ``auth`` (``"none"``, ``"token"``, ``"api_key"``).
        A username in the settings asks for tokens from NBIA hosts that want none.

    Raises
    ------
    ValueError
        For a legacy host without an ``api_key``.
    """
    key_hosts = tuple(h for h, scheme in schemes.items() if scheme == "api_key")
    token_hosts = tuple(
        h for h, scheme in schemes.items()
        if scheme == "token" or (scheme == "none" and settings.username)
    )
    auths: list[AuthBase] = []
    if key_hosts:
        if not settings.api_key:
            raise ValueError(
                "the legacy TCIA REST API needs an api_key (the api_key setting or "
                "INTAKE_TCIA_API_KEY)"
            )
        auths.append(ApiKeyAuth(settings.api_key, key_hosts))
    if token_hosts:
        auths.append(TokenAuth(session, settings, token_hosts))
    if len(auths) > 1:
        return _Both(*auths)
    return auths[0] if auths else None

"""Secrets against hostile that echo requests back (issue #13): a password, api_key or token the
server repeats in its error message reaches no error, log line or CLI output; secrets with line
breaks given to the CLI are refused (or, for an api_key read from a file, stripped) unshown."""

from __future__ import annotations

import json
import logging

import pytest
import test_http
from test_http import V4, answer, token_answer

from intake_tcia import TCIAClient
from intake_tcia.cli import main
from intake_tcia.errors import TCIAAuthError, TCIAHTTPError

PASSWORD = "pw Echo&7781/+"  # characters a form encodes
API_KEY = "key-Echo-4410"
LEGACY = "/services/v4/TCIA/query/"

hostile = test_http.hostile  # the fixture: hostile loopback servers, closed after each test


def echo(handler, status: int) -> None:
    """Answer ``status`` with the request's form and headers in the message, as some servers'
    error pages do."""
    text = f"refused {handler.path}: {handler.body} {json.dumps(dict(handler.headers))}"
    answer(handler, status, text.encode())


def _secrets_shown(texts: list[str], secrets: list[str]) -> list[str]:
    return [s for s in secrets for t in texts if s in t]


def test_a_token_host_echoing_the_login_form_shows_no_password(hostile, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="intake_tcia")
    nlst = hostile(lambda h: answer(h))
    host = hostile(lambda h: echo(h, 401))
    with (
        TCIAClient(
            api_url=host.url + V4,
            nlst_api_url=nlst.url + V4,
            cache_dir=tmp_path,
            retries=0,
            api_version="token",
            username="alice",
            password=PASSWORD,
        ) as client,
        pytest.raises(TCIAAuthError) as refused,
    ):
        client.patients("C")
    sent = host.everything_seen()
    assert "password=pw+Echo%267781%2F%2B" in sent  # the form did carry it, encoded
    shown = [str(refused.value), refused.value.text, caplog.text]
    assert "refused /nbia-api/oauth/token" in shown[0]  # the server's message is kept
    assert _secrets_shown(shown, [PASSWORD, "pw+Echo%267781%2F%2B"]) == []


def test_an_api_host_echoing_the_api_key_or_the_token_shows_neither(hostile, tmp_path):
    legacy = hostile(lambda h: echo(h, 403))
    with TCIAClient(
        api_url=legacy.url + LEGACY,
        nlst_api_url=legacy.url + LEGACY,
        cache_dir=tmp_path,
        retries=0,
        api_key=API_KEY,
    ) as client:
        with pytest.raises(TCIAAuthError) as refused:
            client.patients("C")
    assert API_KEY in legacy.everything_seen() and "api_key" in str(refused.value)
    assert API_KEY not in str(refused.value) and API_KEY not in refused.value.text

    def nbia(handler):
        if handler.path.startswith("/nbia-api/oauth/token"):
            token_answer(handler, "tok-Echo-5150")
        else:
            echo(handler, 500)

    token_host = hostile(nbia)
    with TCIAClient(
        api_url=token_host.url + V4,
        nlst_api_url=token_host.url + V4,
        cache_dir=tmp_path,
        retries=0,
        api_version="token",
    ) as client:
        with pytest.raises(TCIAHTTPError) as failed:
            client.patients("C")
    assert "Bearer tok-Echo-5150" in token_host.everything_seen()
    assert "Bearer ***" in str(failed.value) and "tok-Echo-5150" not in str(failed.value)


def test_the_cli_shows_no_echoed_secret(hostile, tmp_path, capsys, monkeypatch):
    legacy = hostile(lambda h: echo(h, 403))
    monkeypatch.setenv("INTAKE_TCIA_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("INTAKE_TCIA_API_KEY", API_KEY + "\n")  # read from a file: stripped
    url = legacy.url + LEGACY
    assert (
        main(["-v", "--api-url", url, "--nlst-api-url", url, "patients", "--collection", "C"]) == 1
    )
    err = capsys.readouterr().err
    assert "403" in err and API_KEY not in err
    assert f"'api_key': '{API_KEY}'" in legacy.everything_seen().replace('"', "'")  # no "\n"


def test_the_cli_refuses_a_password_with_a_line_break_without_showing_it(
    hostile, tmp_path, capsys, monkeypatch
):
    host = hostile(lambda h: answer(h))
    monkeypatch.setenv("INTAKE_TCIA_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("INTAKE_TCIA_USERNAME", "alice")
    monkeypatch.setenv("INTAKE_TCIA_PASSWORD", PASSWORD + "\r\nX-Evil: 1")
    status = main(["--api-url", host.url + V4, "--nlst-api-url", host.url + V4, "collections"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status != 0 and len(err) == 1 and "line break" in err[0]
    assert "Echo" not in err[0] and "Evil" not in err[0]
    assert host.seen == []  # refused before any request


@pytest.mark.parametrize(
    "url, sent",
    [
        ("https://nbia.example.org:443/nbia-api/services/v4/getSeries", True),
        ("https://NBIA.example.org/nbia-api/services/v4/getSeries", True),
        ("http://nbia.example.org/nbia-api/services/v4/getSeries", False),  # scheme only
        ("http://nbia.example.org:443/nbia-api/services/v4/getSeries", False),
        ("https://nbia.example.org:8443/nbia-api/services/v4/getSeries", False),  # port only
        ("https://nbia.example.org.evil.com/nbia-api/services/v4/getSeries", False),
    ],
)
def test_an_api_key_goes_to_its_scheme_host_and_port_only(url, sent):
    # The one origin change no loopback test can play (https -> http on one host and port):
    # the policy itself, on the request as it is about to be sent.
    import requests

    from intake_tcia.nbia.auth import ApiKeyAuth

    key = ApiKeyAuth(API_KEY, ("https://nbia.example.org/nbia-api/services/v4/",))
    prepared = key(requests.Request("GET", url, headers={"api_key": "stale"}).prepare())
    assert prepared.headers.get("api_key") == (API_KEY if sent else None)  # a stale one dropped

"""The transport against hostile loopback servers: where credentials go, redirects, bounds on
answers (bytes, time, headers), answers cut inside their headers, and which errors are retried.

Each test starts its own small ``http.server`` on 127.0.0.1 that plays one attack, and checks
what that server (and any other it points to) received.
"""

import logging
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from intake_tcia import TCIAClient
from intake_tcia.cli import main
from intake_tcia.errors import (
    TCIAAuthError,
    TCIAConnectionError,
    TCIAHTTPError,
    TCIAResponseError,
)
from intake_tcia.retrieval.transport import MAX_REDIRECTS

PASSWORD = "pw-Hostile-7781"
API_KEY = "key-Hostile-4410"
V4 = "/nbia-api/services/v4/"


class Hostile:
    """A loopback server whose every request is answered by ``play(handler)`` and recorded as
    (method, path, headers, body)."""

    def __init__(self, play):
        self.play = play
        self.seen = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._record()
                outer.play(self)

            def do_POST(self):
                self._record()
                outer.play(self)

            def _record(self):
                size = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(size).decode() if size else ""
                outer.seen.append((self.command, self.path, dict(self.headers), self.body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def everything_seen(self) -> str:
        return repr(self.seen)


@pytest.fixture
def hostile():
    made = []

    def make(play):
        server = Hostile(play)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def answer(handler, status=200, body=b"[]", headers=()):
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def token_answer(handler, token="tok-good", expires_in=3600):
    import json

    answer(handler, body=json.dumps({"access_token": token, "expires_in": expires_in,
                                     "refresh_token": "r"}).encode())


def client_for(url, tmp_path, **options):
    options = {"retries": 0, "cache_dir": tmp_path, "nlst_api_url": url + V4, **options}
    return TCIAClient(api_url=url + V4, **options)


def redirect_to(target):
    def play(handler):
        answer(handler, 302, b"", headers=[("Location", target + handler.path)])
    return play


# -- credentials stay with their origin ----------------------------------------------------------


def test_a_token_login_redirected_elsewhere_posts_no_password_there(hostile, tmp_path):
    other = hostile(lambda h: answer(h, 401, b"who are you"))

    def nbia(handler):
        if handler.path.startswith("/nbia-api/oauth/token"):
            token_answer(handler)
        else:
            redirect_to(other.url)(handler)

    main_host = hostile(nbia)
    with client_for(main_host.url, tmp_path, api_version="token", username="alice",
                    password=PASSWORD) as client, pytest.raises(TCIAAuthError):
        client.patients()
    seen = other.everything_seen()
    assert other.seen, "the redirect was followed"
    assert PASSWORD not in seen and "alice" not in seen and "tok-good" not in seen
    assert not any("oauth" in path for _, path, _, _ in other.seen)


def test_the_legacy_api_key_does_not_follow_a_redirect_to_another_origin(hostile, tmp_path):
    other = hostile(lambda h: answer(h, 200, b"[]"))
    legacy = hostile(redirect_to(other.url))
    base = legacy.url + "/services/v4/TCIA/query/"
    with TCIAClient(api_url=base, nlst_api_url=base, cache_dir=tmp_path, retries=0,
                    api_key=API_KEY) as client:
        client.patients()
    assert other.seen and API_KEY not in other.everything_seen()
    assert API_KEY in legacy.everything_seen()  # it did go to its own host


def test_a_token_endpoint_redirect_is_not_followed(hostile, tmp_path):
    other = hostile(lambda h: token_answer(h, "tok-evil"))

    def nbia(handler):
        if handler.path.startswith("/nbia-api/oauth/token"):
            answer(handler, 307, b"", headers=[("Location", other.url + handler.path)])
        else:
            answer(handler)

    main_host = hostile(nbia)
    with client_for(main_host.url, tmp_path, api_version="token", username="alice",
                    password=PASSWORD) as client, pytest.raises(TCIAAuthError):
        client.patients()
    assert other.seen == []


def test_a_private_api_login_is_never_sent_to_the_nlst_host(hostile, tmp_path):
    def nbia(handler):
        if handler.path.startswith("/nbia-api/oauth/token"):
            token_answer(handler)
        else:
            answer(handler, body=b'[{"Collection": "Private"}]')

    private = hostile(nbia)
    nlst = hostile(nbia)
    for version in ("token", None):
        with TCIAClient(api_url=private.url + V4, nlst_api_url=nlst.url + V4, cache_dir=tmp_path,
                        retries=0, api_version=version, username="alice",
                        password=PASSWORD) as client:
            assert len(client.collections()) == 1  # deduplicated over both hosts
        seen = nlst.everything_seen()
        assert nlst.seen and PASSWORD not in seen and "alice" not in seen
    assert PASSWORD in private.everything_seen()
    # NLST credentials of its own are used there, and only there
    with TCIAClient(api_url=private.url + V4, nlst_api_url=nlst.url + V4, cache_dir=tmp_path,
                    retries=0, api_version="token", nlst_username="bob",
                    nlst_password="nlst-pw") as client:
        client.collections()
    assert "nlst-pw" in nlst.everything_seen() and "nlst-pw" not in private.everything_seen()


def test_a_redirect_loop_is_bounded(hostile, tmp_path):
    loop = hostile(lambda h: answer(h, 302, b"", headers=[("Location", h.path)]))
    with client_for(loop.url, tmp_path, retries=2) as client:
        with pytest.raises(TCIAHTTPError, match="redirects"):
            client.patients()
    assert len(loop.seen) == 1  # the hop back to the URL asked is a loop: refused at once
    chain = hostile(lambda h: answer(h, 302, b"", headers=[("Location", h.path + "x")]))
    with client_for(chain.url, tmp_path, retries=2) as client:
        with pytest.raises(TCIAHTTPError, match="redirects"):
            client.patients()
    assert len(chain.seen) == 2 + 2 <= MAX_REDIRECTS  # one hop free, then one a retry


@pytest.mark.parametrize("bad", [{"expires_in": "soon"}, {"token": "tok\r\nX-Evil: 1"},
                                 {"expires_in": "nan"}, {"expires_in": -5}])
def test_a_malformed_token_answer_is_an_auth_error(hostile, tmp_path, bad):
    def nbia(handler):
        if handler.path.startswith("/nbia-api/oauth/token"):
            token_answer(handler, **bad)
        else:
            answer(handler)

    server = hostile(nbia)
    with client_for(server.url, tmp_path, api_version="token") as client:
        with pytest.raises(TCIAAuthError, match="token answer"):
            client.patients()
    assert not any("X-Evil" in str(headers) for _, _, headers, _ in server.seen)


def test_secret_settings_with_line_breaks_are_refused_without_showing_them(tmp_path):
    with pytest.raises(ValueError, match="password holds a line break") as err:
        TCIAClient(cache_dir=tmp_path, username="u", password=PASSWORD + "\n")
    assert PASSWORD not in str(err.value)
    # a key read from a file keeps its newline: that one is stripped, not echoed
    assert TCIAClient(cache_dir=tmp_path, api_key=API_KEY + "\n").settings.api_key == API_KEY


def test_the_session_auth_repr_shows_no_login(tmp_path):
    client = TCIAClient(cache_dir=tmp_path, api_version="token", username="alice",
                        password=PASSWORD)
    shown = repr(client._transport.session.auth)
    assert "alice" not in shown and PASSWORD not in shown


# -- bounded answers -----------------------------------------------------------------------------


def endless(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.end_headers()
    handler.wfile.write(b"[")
    try:
        while True:
            handler.wfile.write(b' {"PatientId": "x"},' * 4096)
    except OSError:
        pass


def test_an_endless_answer_is_cut_at_max_answer_bytes(hostile, tmp_path):
    server = hostile(endless)
    with client_for(server.url, tmp_path, max_answer_bytes=4 << 20) as client:
        start = time.monotonic()
        with pytest.raises(TCIAResponseError, match="max_answer_bytes"):
            client.patients()
    assert time.monotonic() - start < 10


def test_sparse_rows_are_cut_when_their_columns_outgrow_max_answer_bytes(hostile, tmp_path):
    # each 20-byte row becomes a row of every getPatient column once parsed: the parsed size,
    # not only the bytes sent, must meet the cap, or memory grows several times faster than it
    server = hostile(endless)
    with client_for(server.url, tmp_path, max_answer_bytes=16 << 20) as client:
        with pytest.raises(TCIAResponseError, match="once parsed") as cut:
            client.patients()
    assert "max_answer_bytes" in str(cut.value)

def trickle(handler, data: bytes, pause: float) -> None:
    try:
        for byte in data:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(pause)
    except OSError:
        pass


def test_a_trickled_body_with_a_content_length_meets_query_timeout(hostile, tmp_path):
    body = b"[" + b" " * 200 + b"]"

    def slow(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        trickle(handler, body, 0.1)

    server = hostile(slow)
    with client_for(server.url, tmp_path, query_timeout=1.0, timeout=5.0) as client:
        start = time.monotonic()
        with pytest.raises(TCIAResponseError, match="still sending"):
            client.patients()
    assert time.monotonic() - start < 4


def test_trickled_headers_meet_the_read_timeout(hostile, tmp_path):
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    server = hostile(lambda h: trickle(h, head, 0.1))
    with client_for(server.url, tmp_path, timeout=1.0) as client:
        start = time.monotonic()
        with pytest.raises(TCIAConnectionError, match="timed out"):
            client.patients()
    assert time.monotonic() - start < 4


def test_an_answer_cut_inside_its_headers_is_retried(hostile, tmp_path):
    def cut_once(handler):
        if len(server.seen) == 1:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
        else:
            answer(handler, body=b'[{"PatientId": "P1", "Collection": "C"}]')

    server = hostile(cut_once)
    with client_for(server.url, tmp_path, retries=1, backoff_factor=0.01) as client:
        assert list(client.patients("C")["PatientID"]) == ["P1"]
    assert len(server.seen) == 2
    with client_for(server.url, tmp_path) as client:
        server.seen.clear()
        with pytest.raises(TCIAConnectionError, match="inside its headers"):
            client.patients("C")


@pytest.mark.slow
def test_leading_whitespace_is_parsed_in_linear_time(hostile, tmp_path):
    body = b" " * (64 << 20) + b"[]"
    server = hostile(lambda h: answer(h, body=body))
    with client_for(server.url, tmp_path) as client:
        start = time.monotonic()
        assert len(client.patients()) == 0
    assert time.monotonic() - start < 20


# -- what is retried, and how it is told --------------------------------------------------------


def test_4xx_answers_are_not_retried_but_408_is(hostile, tmp_path):
    server = hostile(lambda h: answer(h, 400, b"bad request"))
    with client_for(server.url, tmp_path, retries=3, backoff_factor=0.01) as client:
        with pytest.raises(TCIAHTTPError, match="HTTP 400"):
            client.patients()
    assert len(server.seen) == 1
    timeout = hostile(lambda h: answer(h, 408, b"slow"))
    with client_for(timeout.url, tmp_path, retries=2, backoff_factor=0.01) as client:
        with pytest.raises(TCIAHTTPError, match="HTTP 408"):
            client.patients()
    assert len(timeout.seen) == 3


def test_an_unknown_host_fails_at_once(tmp_path):
    client = TCIAClient(api_url="http://no-such-host.invalid/nbia-api/services/v4/",
                        cache_dir=tmp_path, retries=3, backoff_factor=5)
    start = time.monotonic()
    with pytest.raises(TCIAConnectionError, match="unknown host") as err:
        client.patients()
    assert err.value.permanent and time.monotonic() - start < 4


@pytest.mark.parametrize("url", ["nbia.example.org/nbia-api/services/v4/", "http:///v4/",
                                 "ftp://nbia.example.org/"])
def test_a_base_url_without_scheme_or_host_is_refused_when_the_client_is_made(tmp_path, url):
    with pytest.raises(ValueError, match="api_url must be an http"):
        TCIAClient(api_url=url, cache_dir=tmp_path)


@pytest.mark.parametrize("setting", [{"timeout": math.nan}, {"timeout": math.inf},
                                     {"query_timeout": -1}, {"backoff_factor": math.nan},
                                     {"max_backoff": -1}, {"max_answer_bytes": 0}])
def test_nonsense_numbers_are_refused_when_the_client_is_made(tmp_path, setting):
    with pytest.raises(ValueError, match="must be"):
        TCIAClient(cache_dir=tmp_path, **setting)


def test_retries_are_logged_at_info_and_the_cli_shows_them_only_with_v(
    hostile, tmp_path, caplog, capsys, monkeypatch
):
    state = {"n": 0}

    def busy_once(handler):
        state["n"] += 1
        if state["n"] % 2:
            answer(handler, 503, b"busy")
        else:
            answer(handler, body=b'[{"Collection": "C"}]')

    server = hostile(busy_once)
    monkeypatch.setenv("INTAKE_TCIA_NLST_API_URL", server.url + V4)
    caplog.set_level(logging.WARNING, logger="intake_tcia")
    with client_for(server.url, tmp_path, retries=1, backoff_factor=0.01) as client:
        client.patients()
    assert "retry" not in caplog.text
    caplog.set_level(logging.INFO, logger="intake_tcia")
    with client_for(server.url, tmp_path, retries=1, backoff_factor=0.01) as client:
        client.patients()
    assert "HTTP 503" in caplog.text and "retry 1 of 1" in caplog.text
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="intake_tcia")

    monkeypatch.setenv("INTAKE_TCIA_API_URL", server.url + V4)
    monkeypatch.setenv("INTAKE_TCIA_CACHE_DIR", str(tmp_path))
    assert main(["collections"]) == 0
    assert "retry" not in capsys.readouterr().err
    assert main(["-v", "collections"]) == 0
    err = capsys.readouterr().err
    assert "HTTP 503" in err and "retry" in err


def test_the_cli_error_for_an_unknown_host_is_one_short_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INTAKE_TCIA_CACHE_DIR", str(tmp_path))
    assert main(["--api-url", "http://no-such-host.invalid/nbia-api/services/v4/",
                 "--nlst-api-url", "http://no-such-host.invalid/nbia-api/services/v4/",
                 "collections"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown host" in err[0] and len(err[0]) < 200


def test_tcia_fs_lists_no_instance_path_it_could_not_open(hostile, tmp_path):
    from intake_tcia.fs import TCIAFileSystem

    body = b'[{"SOPInstanceUID": "../../x"}, {"SOPInstanceUID": "1.2.3.4"}]'
    server = hostile(lambda h: answer(h, body=body))
    fs = TCIAFileSystem(api_url=server.url + V4, nlst_api_url=server.url + V4,
                        cache_dir=tmp_path, retries=0, skip_instance_cache=True)
    names = fs.ls("C/P/1.2/1.2.3", detail=False)
    assert names == ["C/P/1.2/1.2.3/1.2.3.4.dcm"]

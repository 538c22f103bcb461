"""Credentials: NBIA OAuth tokens (guest or login, renewed, retried on 401), the legacy api_key,
and secrets kept out of repr, str, logs and pickles."""

import logging
import pickle
import time

import pytest
import requests

from intake_tcia import TCIAClient
from intake_tcia.config import Settings
from intake_tcia.errors import TCIAAuthError
from intake_tcia.nbia.auth import ApiKeyAuth, TokenAuth, token_url
from intake_tcia.testing import ArchiveServer
from intake_tcia.testing.server import SAMPLE_API_KEY

PASSWORD = "pw-Zq81-never-shown"
API_KEY = SAMPLE_API_KEY
#: A collection of the main host: its queries ask that host alone (one token).
MAIN = "Pydicom-CT-Series"


@pytest.fixture(scope="module")
def token_server():
    """The sample archive as an NBIA v4 that wants a token."""
    with ArchiveServer(flavour="token") as server:
        yield server


@pytest.fixture
def nbia(token_server):
    token_server.reset()
    token_server.token_lifetime = 3600.0
    token_server.users = {"nbia_guest": "", "alice": PASSWORD}
    token_server.revoke_tokens(refresh=True)
    yield token_server


def login(server, tmp_path, **options):
    options = {"api_version": "token", "retries": 0, **options}
    return TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                      cache_dir=tmp_path, **options)


def grants(server):
    return [r.params.get("grant_type") for r in server.requests if r.endpoint == "oauth/token"]


def test_guest_token_asked_once_per_host(nbia, tmp_path):
    with login(nbia, tmp_path) as client:
        client.collections()  # both hosts
        client.series(collection="NLST")
        client.patients()
    assert grants(nbia) == ["password", "password"]
    asked = [r.params for r in nbia.requests if r.endpoint == "oauth/token"]
    assert all(p["username"] == "nbia_guest" and p["client_id"] == "NBIA" for p in asked)
    assert all(r.status == 200 for r in nbia.requests)


def test_without_a_token_the_server_refuses(nbia, tmp_path):
    with login(nbia, tmp_path, api_version="v4") as client, pytest.raises(TCIAAuthError) as err:
        client.patients(MAIN)
    assert err.value.status == 401


def test_credentials_from_the_environment(nbia, tmp_path, monkeypatch):
    monkeypatch.setenv("INTAKE_TCIA_USERNAME", "alice")
    monkeypatch.setenv("INTAKE_TCIA_PASSWORD", PASSWORD)
    with login(nbia, tmp_path, api_version=None) as client:  # a username asks for tokens
        assert len(client.patients(MAIN))
    asked = [r.params for r in nbia.requests if r.endpoint == "oauth/token"]
    assert asked[0]["username"] == "alice"
    assert asked[0]["password"] == "***"  # the server's own log masks it too


def test_a_wrong_password_is_an_auth_error(nbia, tmp_path):
    with login(nbia, tmp_path, username="alice", password="wrong") as client:
        with pytest.raises(TCIAAuthError, match="grant refused") as err:
            client.patients(MAIN)
    assert err.value.status == 401
    assert "wrong" not in str(err.value)


def test_token_renewed_with_the_refresh_grant_before_it_expires(nbia, tmp_path):
    nbia.token_lifetime = 1.0
    with login(nbia, tmp_path) as client:
        client.patients(MAIN)
        time.sleep(1.0)
        client.patients(MAIN)
    assert grants(nbia) == ["password", "refresh_token"]
    assert [r.status for r in nbia.requests if r.endpoint == "getPatient"] == [200, 200]


def test_refused_refresh_falls_back_to_a_new_login(nbia, tmp_path):
    nbia.token_lifetime = 1.0
    with login(nbia, tmp_path) as client:
        client.patients(MAIN)
        nbia.revoke_tokens(refresh=True)
        time.sleep(1.0)
        assert len(client.patients(MAIN))
    assert grants(nbia) == ["password", "refresh_token", "password"]


def test_a_401_renews_the_token_and_retries_once(nbia, tmp_path):
    with login(nbia, tmp_path) as client:
        before = client.patients(MAIN)
        nbia.revoke_tokens()  # as a server restart would
        assert client.patients(MAIN).equals(before)
        statuses = [r.status for r in nbia.requests if r.endpoint == "getPatient"]
        assert statuses == [200, 401, 200]
        assert grants(nbia) == ["password", "refresh_token"]


def test_a_download_carries_the_token(nbia, tmp_path):
    uid = nbia.archive.series_uids()[0]
    with login(nbia, tmp_path / "cache") as client:
        result = client.download([uid], tmp_path / "dest", progress=False)
    assert result.loc[0, "status"] == "downloaded"
    assert nbia.count("getImage") == 1


def test_token_url_of_a_base():
    assert token_url("https://h.org/nbia-api/services/v4/getSeries") == (
        "https://h.org/nbia-api/oauth/token")
    with pytest.raises(ValueError, match="token endpoint"):
        token_url("https://api.datacite.org/dois/10.1/x")


def test_credentials_go_only_to_the_api_hosts(tmp_path):
    base = "https://nbia.example.org/nbia-api/services/v4/"
    key = ApiKeyAuth(API_KEY, (base,))
    for url, sent in ((base + "getSeries", True), (base + "../v1/getContentsByName", True),
                      ("https://api.datacite.org/dois/10.7937/x", False)):
        prepared = requests.Request("GET", url).prepare()
        assert ("api_key" in key(prepared).headers) is sent
    tokens = TokenAuth(requests.Session(), Settings(cache_dir=tmp_path), {base: ("u", "p")})
    prepared = requests.Request("GET", "https://api.datacite.org/dois/10.7937/x").prepare()
    assert "Authorization" not in tokens(prepared).headers  # and no token was asked for


# -- the legacy api_key ---------------------------------------------------------------------------


def test_legacy_needs_its_api_key(tmp_path):
    with ArchiveServer(flavour="legacy") as legacy:
        options = {"api_url": legacy.api_url, "nlst_api_url": legacy.nlst_api_url,
                   "cache_dir": tmp_path, "retries": 0}
        with pytest.raises(ValueError, match="api_key"):
            TCIAClient(**options)
        with TCIAClient(api_key="not-the-key", **options) as client:
            with pytest.raises(TCIAAuthError):
                client.patients(MAIN)
        with TCIAClient(api_key=API_KEY, **options) as client:
            assert len(client.patients(MAIN))


# -- secrets --------------------------------------------------------------------------------------


def test_secrets_never_shown_logged_or_pickled(nbia, tmp_path, caplog, monkeypatch):
    for name in ("INTAKE_TCIA_USERNAME", "INTAKE_TCIA_PASSWORD", "INTAKE_TCIA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.DEBUG)
    client = login(nbia, tmp_path, username="alice", password=PASSWORD, api_key=API_KEY,
                   retries=1, backoff_factor=0.01)
    with client:
        client.patients(MAIN)
        nbia.revoke_tokens()
        nbia.faults.add("status", endpoint="getPatientStudy", code=503)
        client.studies()  # a 401 and a retried 503 along the way: both logged paths
        with pytest.raises(TCIAAuthError):
            login(nbia, tmp_path, username="alice", password=PASSWORD + "x").patients(MAIN)
        tokens = {t.encode() for t in nbia.tokens}
        assert tokens
        secrets = {PASSWORD.encode(), API_KEY.encode(), *tokens}
        shown = [repr(client), str(client), repr(client.settings), str(client.settings),
                 repr(client._transport.session.auth), caplog.text]
        pickled = [pickle.dumps(client), pickle.dumps(client.settings)]
        for secret in secrets:
            assert not any(secret.decode() in text for text in shown), secret
            assert not any(secret in blob for blob in pickled), secret
        assert "503" in caplog.text  # the log did record the retry
        with pytest.raises(TypeError, match="secrets"):
            pickle.dumps(client._transport.session.auth)


def test_an_unpickled_client_rereads_secrets_from_the_environment(nbia, tmp_path, monkeypatch):
    monkeypatch.delenv("INTAKE_TCIA_PASSWORD", raising=False)
    with login(nbia, tmp_path, username="alice", password=PASSWORD) as client:
        blob = pickle.dumps(client)
    lost = pickle.loads(blob)
    assert lost.settings.password is None and lost.settings.username is None
    monkeypatch.setenv("INTAKE_TCIA_USERNAME", "alice")
    monkeypatch.setenv("INTAKE_TCIA_PASSWORD", PASSWORD)
    found = pickle.loads(blob)
    assert found.settings.password == PASSWORD
    with found:
        assert len(found.patients(MAIN))
    assert [r.params.get("username") for r in nbia.requests if r.endpoint == "oauth/token"] == [
        "alice"]

"""Settings: keywords over environment over defaults; NLST routing; errors for bad values."""

import pickle
from pathlib import Path

import pytest

from intake_tcia import errors
from intake_tcia.config import DEFAULT_API_URL, Settings, is_nlst


def test_defaults_environment_and_keywords(monkeypatch, tmp_path):
    monkeypatch.delenv("INTAKE_TCIA_API_URL", raising=False)
    assert Settings.from_env().api_url == DEFAULT_API_URL
    monkeypatch.setenv("INTAKE_TCIA_API_URL", "http://127.0.0.1:1/nbia-api/services/v4")
    monkeypatch.setenv("INTAKE_TCIA_CACHE_DIR", str(tmp_path))
    settings = Settings.from_env()
    assert settings.api_url == "http://127.0.0.1:1/nbia-api/services/v4/"
    assert settings.cache_dir == Path(tmp_path)
    assert Settings.from_env(api_url="http://h/x/").api_url == "http://h/x/"


def test_unknown_and_bad_settings_are_refused():
    with pytest.raises(TypeError, match="api_ulr"):
        Settings.from_env(api_ulr="x")
    with pytest.raises(ValueError, match="retries"):
        Settings(retries=-1)
    with pytest.raises(ValueError, match="read_timeout"):
        Settings(read_timeout=0)


def test_nlst_has_its_own_host():
    settings = Settings(api_url="http://main/", nlst_api_url="http://nlst/")
    assert is_nlst("nlst") and is_nlst(" NLST ") and not is_nlst("LIDC-IDRI") and not is_nlst(None)
    assert settings.host_for("NLST") == "http://nlst/"
    assert settings.host_for("LIDC-IDRI") == "http://main/"
    assert settings.hosts == ("http://main/", "http://nlst/")


def test_errors_share_one_base_and_pickle():
    error = errors.TCIANotFoundError(400, "not been granted the access", "http://x/getImage")
    assert isinstance(error, errors.TCIAError)
    assert isinstance(error, FileNotFoundError)
    assert "HTTP 400" in str(error) and "http://x/getImage" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.text, copy.url) == (400, error.text, error.url)
    with pytest.raises(errors.MissingDependencyError, match=r"intake-tcia\[nothing\]"):
        errors.import_optional("no_such_module_xyz", "nothing", "A feature")


def test_backend_settings_from_keywords_and_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("INTAKE_TCIA_BACKEND", "IDC")
    monkeypatch.setenv("INTAKE_TCIA_IDC_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("INTAKE_TCIA_IDC_INDEX", str(tmp_path))
    settings = Settings.from_env()
    assert (settings.backend, settings.idc_url, settings.idc_index) == (
        "idc",
        "http://127.0.0.1:9/",
        tmp_path,
    )
    assert Settings.from_env(backend="nbia").backend == "nbia"


def test_backend_settings_are_checked():
    with pytest.raises(ValueError, match="backend must be one of nbia, idc, auto, not 'nbai'"):
        Settings(backend="nbai")
    with pytest.raises(ValueError, match="idc_url"):
        Settings(idc_url="s3://idc-open-data")
    assert Settings().backend == "auto" and Settings().idc_url == "https://s3.amazonaws.com/"

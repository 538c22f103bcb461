"""Shared fixtures: the sample archive served over loopback HTTP (see intake_tcia.testing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from intake_tcia.testing import ArchiveServer, IDCBucketServer


@pytest.fixture(autouse=True)
def nbia_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients talk to NBIA only unless a test names another backend: with the default "auto",
    a test that makes NBIA unreachable on purpose would get the IDC index's answer instead."""
    monkeypatch.setenv("INTAKE_TCIA_BACKEND", "nbia")


@pytest.fixture(scope="session")
def archive_server() -> Iterator[ArchiveServer]:
    """One sample-archive server (main + NLST hosts, DataCite) for the whole test run."""
    with ArchiveServer() as server:
        yield server


@pytest.fixture
def server(archive_server: ArchiveServer) -> Iterator[ArchiveServer]:
    """The session's server with no faults and an empty request log."""
    archive_server.reset()
    yield archive_server
    archive_server.reset()


@pytest.fixture
def tmp_cache(tmp_path: Path) -> Path:
    """An empty cache directory for one test."""
    cache = tmp_path / "cache"
    cache.mkdir()
    return cache


@pytest.fixture
def env(server: ArchiveServer, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> ArchiveServer:
    """The sample archive and a fresh cache, named only through the environment variables."""
    monkeypatch.setenv("INTAKE_TCIA_API_URL", server.api_url)
    monkeypatch.setenv("INTAKE_TCIA_NLST_API_URL", server.nlst_api_url)
    monkeypatch.setenv("INTAKE_TCIA_CACHE_DIR", str(tmp_cache))
    return server


@pytest.fixture(scope="session")
def idc_bucket_server(archive_server: ArchiveServer) -> Iterator[IDCBucketServer]:
    """The sample archive's instances in a loopback S3 bucket (IDC's keys), for the whole run."""
    with IDCBucketServer(archive_server.archive) as bucket:
        yield bucket


@pytest.fixture
def bucket(idc_bucket_server: IDCBucketServer) -> Iterator[IDCBucketServer]:
    """The session's bucket with no faults, S3's page size and an empty request log."""
    idc_bucket_server.reset()
    idc_bucket_server.sync()
    yield idc_bucket_server
    idc_bucket_server.reset()


@pytest.fixture
def idc_index(server: ArchiveServer, tmp_path: Path) -> Path:
    """An IDC index folder (idc-index-data's layout) of the sample archive's series as they are
    now; pass it as ``idc_index=`` with ``backend="idc"``."""
    from intake_tcia.testing import write_idc_index

    return write_idc_index(tmp_path / "idc-index", server.archive)

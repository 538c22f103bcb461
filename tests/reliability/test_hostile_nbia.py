"""Hostile NBIA answers the transport and the zip reader must not take at face value: headers
cut after a complete line, redirect loops, a zip member whose CRC is wrong while its MD5 is
right, and an endless CSV answer (memory bounded by what was asked, not by 1 GiB)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from intake_tcia.client import TCIAClient
from intake_tcia.errors import TCIAConnectionError, TCIAError, TCIAIntegrityError
from intake_tcia.testing import ArchiveServer
from intake_tcia.testing.hostile_nbia import HostileNBIA

RETRIES = 2


@pytest.fixture
def nbia(server: ArchiveServer) -> Iterator[HostileNBIA]:
    with HostileNBIA(server.api_url) as hostile:
        yield hostile


def _client(nbia: HostileNBIA, server: ArchiveServer, cache: Path, **options: object
            ) -> TCIAClient:
    options = {"retries": RETRIES, "backoff_factor": 0.01, "max_backoff": 0.02,
               "timeout": (2.0, 2.0), "query_timeout": 10.0, **options}
    return TCIAClient(api_url=nbia.api_url, nlst_api_url=server.nlst_api_url, cache_dir=cache,
                      backend="nbia", **options)


def _ct_uid(server: ArchiveServer) -> str:
    archive = server.archive
    return max((u for u in archive.series_uids() if archive.instances(u)),
               key=lambda u: len(archive.instances(u)))


@pytest.mark.parametrize("line", ["Transfer-Encoding: chunked", "Content-Type: application/json"])
def test_an_answer_cut_after_a_header_line_is_retried_not_read_as_empty(
    nbia: HostileNBIA, server: ArchiveServer, tmp_path: Path, line: str
) -> None:
    nbia.attacks["getCollectionValues"] = ("cut_headers", {"line": line})
    with pytest.raises(TCIAConnectionError, match="getCollectionValues"):
        _client(nbia, server, tmp_path).collections()
    assert nbia.count("getCollectionValues") == 1 + RETRIES


def test_a_redirect_chain_makes_at_most_two_plus_retries_requests(
    nbia: HostileNBIA, server: ArchiveServer, tmp_path: Path
) -> None:
    nbia.attacks["getCollectionValues"] = ("redirect_loop", {})
    with pytest.raises(TCIAError, match="redirect"):
        _client(nbia, server, tmp_path).collections()
    assert nbia.count("getCollectionValues") == 2 + RETRIES  # one hop free, then retries


def test_a_zip_member_with_a_wrong_crc_is_refused_though_its_md5_matches(
    nbia: HostileNBIA, server: ArchiveServer, tmp_path: Path
) -> None:
    uid = _ct_uid(server)
    nbia.attacks["getImage"] = ("bad_crc", {})
    with pytest.raises(TCIAIntegrityError, match="CRC") as info:
        _client(nbia, server, tmp_path / "cache", retries=0).fetch_series(uid)
    assert uid in str(info.value)
    published = tmp_path / "cache" / "series"
    assert not published.exists() or not any(published.iterdir())


def test_an_endless_csv_answer_is_cut_near_what_was_asked(
    nbia: HostileNBIA, server: ArchiveServer, tmp_path: Path
) -> None:
    """One series asked: the answer may not grow towards max_answer_bytes (1 GiB) first."""
    nbia.attacks["getSeriesMetadata"] = ("endless_csv", {})
    client = _client(nbia, server, tmp_path, retries=0)
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            client.series_metadata(_ct_uid(server))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=ask, daemon=True)
    start = time.monotonic()
    thread.start()
    while thread.is_alive() and nbia.sent_bytes < 160 << 20 and time.monotonic() - start < 20:
        time.sleep(0.01)
    sent = nbia.sent_bytes
    nbia.attacks.clear()
    nbia._stopping.set()  # the endless answer stops (old clients would read 1 GiB)
    thread.join(10)
    assert sent < 64 << 20, f"{sent} bytes sent before the client gave up"
    assert outcome and isinstance(outcome[0], TCIAError)
    assert "getSeriesMetadata" in str(outcome[0])

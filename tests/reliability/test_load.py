"""Load: 50 concurrent readers of one uncached series, through ``tcia://`` and the catalog's
series source, in threads and in processes: one download, and every reader gets the same
verified bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from intake_tcia.testing import ArchiveServer

from .harness import archive_md5s, audit_cache, get_image_counts, run_readers


def _check(server: ArchiveServer, cache: Path, uid: str, results: list[object]) -> None:
    expected = sorted(archive_md5s(server.archive, uid).items())
    assert len(results) == 50
    assert [r for r in results if r != expected] == []
    assert get_image_counts(server) == {uid: 1}
    assert server.count("getSingleImage") == 0
    audit = audit_cache(cache, server.archive)
    assert audit.complete == {uid} and audit.corrupt == [] and audit.stray == []


def test_fifty_threads_read_one_series_downloaded_once(scale: ArchiveServer,
                                                       tmp_path: Path) -> None:
    uid = scale.load_uid
    results = run_readers(scale, tmp_path / "cache", uid)
    _check(scale, tmp_path / "cache", uid, results)


def test_fifty_readers_in_five_processes(scale: ArchiveServer, tmp_path: Path) -> None:
    uid = scale.load_uid
    results = run_readers(scale, tmp_path / "cache", uid, processes=5)
    _check(scale, tmp_path / "cache", uid, results)


@pytest.mark.slow
def test_fifty_processes_read_one_series_downloaded_once(scale: ArchiveServer,
                                                         tmp_path: Path) -> None:
    uid = scale.load_uid
    results = run_readers(scale, tmp_path / "cache", uid, processes=50)
    _check(scale, tmp_path / "cache", uid, results)

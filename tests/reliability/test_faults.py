"""Nothing is lost: many series downloaded through injected faults, and a download killed with
SIGKILL then run again. Every series ends complete and MD5-verified (checked here against the
archive's own files, each parsed by pydicom) or reported failed, with bounded retries."""

from __future__ import annotations

from pathlib import Path

import pytest

from intake_tcia.testing import ArchiveServer

from .harness import (
    KillRun,
    StormRun,
    build_archive,
    get_image_counts,
    make_client,
    run_kill_and_resume,
    run_storm,
)

RETRIES = 3


def _check_storm(run: StormRun, uids: list[str]) -> None:
    plan, first, second = run.plan, run.tables[0], run.tables[1]
    statuses = first.set_index("SeriesInstanceUID")["status"]
    doomed = plan.doomed()
    assert doomed, "the plan must make some series fail"
    # every series is complete and verified, or reported failed; the failed are the doomed
    assert set(statuses[statuses == "failed"].index) == doomed
    assert set(statuses[statuses == "downloaded"].index) == set(uids) - doomed
    assert run.lost(uids, 0) == set()
    assert run.dests[0].complete == set(uids) - doomed
    assert run.caches[0].complete == set(uids) - doomed
    for audit in (*run.caches, *run.dests):
        assert audit.corrupt == [] and audit.stray == [] and audit.incomplete == {}
    assert run.caches[0].leftovers == []
    # retries are bounded: one request per fault, then one that succeeds, at most 1 + retries
    assert run.requests[0] == {uid: plan.expected_requests(uid) for uid in uids}
    assert max(run.requests[0].values()) <= 1 + RETRIES
    errors = first.set_index("SeriesInstanceUID").loc[sorted(doomed), "error"]
    assert all(uid in error for uid, error in errors.items())
    # the same download again fetches the failed series only, and then nothing is missing
    assert run.requests[1] == {uid: 1 for uid in doomed}
    assert set(second["status"]) <= {"downloaded", "cached"}
    assert run.lost(uids, 1) == set() and run.dests[1].complete == set(uids)


def test_a_fault_storm_loses_nothing_and_lets_nothing_corrupt_in(
    scale: ArchiveServer, tmp_path: Path
) -> None:
    run = run_storm(scale, scale.uids, tmp_path, rate=0.2, retries=RETRIES, seed=1,
                    doomed_every=10)
    assert run.plan.injected >= len(scale.uids) // 5
    _check_storm(run, scale.uids)


@pytest.mark.slow
def test_a_fault_storm_over_200_series(tmp_path: Path) -> None:
    archive, uids = build_archive(tmp_path / "archive", 200)
    with ArchiveServer(archive) as server:
        run = run_storm(server, uids, tmp_path / "run", rate=0.2, retries=RETRIES, seed=2)
    requests = sum(run.requests[0].values())
    assert run.plan.injected >= 0.15 * requests  # about 20% of the getImage requests fail
    _check_storm(run, uids)


def test_retries_are_bounded_whatever_the_mix_of_faults(
    scale: ArchiveServer, tmp_path: Path
) -> None:
    uid = scale.uids[0]
    for _ in range(RETRIES + 1):
        scale.faults.add("status", endpoint="getImage", series=uid, code=503, retry_after=0)
        scale.faults.add("truncate", endpoint="getImage", series=uid, after_bytes=1024)
    with make_client(scale, tmp_path / "cache", retries=RETRIES) as client:
        table = client.download([uid], tmp_path / "dest", on_error="return", progress=False)
    assert get_image_counts(scale)[uid] <= 1 + RETRIES
    assert table.loc[0, "status"] == "failed"


def _check_kill(run: KillRun, uids: list[str]) -> None:
    assert run.returncode < 0, "the download ended before it could be killed"
    assert 0 < len(run.cached_at_kill) < len(uids)
    # what the killed process left is complete and verified, or invisible
    assert run.cache_at_kill.complete == run.cached_at_kill
    assert run.cache_at_kill.corrupt == [] and run.cache_at_kill.incomplete == {}
    assert run.cache_at_kill.stray == []
    # run again: finishes, and fetches exactly what was missing, once each
    assert set(run.table["status"]) <= {"downloaded", "cached"}
    assert run.requests == {uid: 1 for uid in set(uids) - run.cached_at_kill}
    statuses = run.table.set_index("SeriesInstanceUID")["status"]
    assert set(statuses[statuses == "cached"].index) == run.cached_at_kill
    assert run.dest.complete == set(uids) and run.cache.complete == set(uids)
    for audit in (run.cache, run.dest):
        assert audit.corrupt == [] and audit.stray == [] and audit.incomplete == {}


def test_a_download_killed_mid_way_resumes_with_only_what_is_missing(
    scale: ArchiveServer, tmp_path: Path
) -> None:
    _check_kill(run_kill_and_resume(scale, scale.uids, tmp_path), scale.uids)


@pytest.mark.slow
def test_a_download_of_200_series_killed_mid_way_resumes(tmp_path: Path) -> None:
    archive, uids = build_archive(tmp_path / "archive", 200)
    with ArchiveServer(archive) as server:
        run = run_kill_and_resume(server, uids, tmp_path / "run", kill_after=0.5, latency=0.01)
    _check_kill(run, uids)

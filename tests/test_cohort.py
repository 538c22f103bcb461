"""map_series on a real dask LocalCluster (two worker processes) against the sample archive's
loopback S3 bucket and NBIA server; and a series source's to_dask() read on the workers."""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from intake_tcia.client import TCIAClient
from intake_tcia.cohort import COLUMNS, read_results
from intake_tcia.testing import ArchiveServer, IDCBucketServer, write_idc_index
from intake_tcia.volume import volume_from_files

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


# -- what the workers run -------------------------------------------------------------------------


def stats(volume: Any) -> dict[str, Any]:
    """Per-series statistics of a Volume (plain Python, so they travel as JSON)."""
    time.sleep(0.05)  # long enough that both single-threaded workers get tasks
    array = np.asarray(volume.array)
    return {"shape": [int(n) for n in array.shape], "mean": float(array.mean()),
            "max": float(array.max()), "spacing": [float(s) for s in volume.spacing]}


def file_names(paths: list[str]) -> list[str]:
    return sorted(Path(p).name for p in paths)


def fail_on(bad_uid: str, volume: Any) -> dict[str, Any]:
    if volume.metadata.get("SeriesInstanceUID") == bad_uid:
        raise ArithmeticError(f"no statistics for {bad_uid}")
    return stats(volume)


def die_once(marker: str, volume: Any) -> dict[str, Any]:
    """Kill this worker process the first time any task gets here (a marker file says so)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return stats(volume)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(13)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=":0", silence_logs=50) as local,
        distributed.Client(local) as dask_client,
    ):
        yield dask_client


@pytest.fixture(scope="module")
def module_index(archive_server: ArchiveServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_idc_index(tmp_path_factory.mktemp("idc") / "index", archive_server.archive)


def _volume_series(archive_server: ArchiveServer) -> list[str]:
    """Series of the archive that form one volume with full geometry, with their files."""
    found = []
    built_in = [u for name in ("Pydicom-DICOMDIR", "Pydicom-CT-Series", "NLST")
                for u in archive_server.archive.series_uids(name)]  # not other tests' series
    for uid in built_in:
        paths = [p for _, p in archive_server.archive.instances(uid)]
        if not paths:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                volume_from_files(paths)
            except Exception:  # noqa: BLE001 - not a volume: left out
                continue
        found.append(uid)
    return found


@pytest.fixture(scope="module")
def volume_uids(archive_server: ArchiveServer) -> list[str]:
    uids = _volume_series(archive_server)
    assert len(uids) >= 8, uids
    return uids


def _expected(archive_server: ArchiveServer, uid: str) -> dict[str, Any]:
    """The statistics computed here, from the archive's own files (no client, no cache)."""
    return stats(volume_from_files([p for _, p in archive_server.archive.instances(uid)]))


@pytest.fixture
def idc(bucket: IDCBucketServer, server: ArchiveServer, module_index: Path,
        tmp_path: Path) -> TCIAClient:
    return TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                      cache_dir=tmp_path / "cache", backend="idc", idc_url=bucket.url,
                      idc_index=module_index)


# -- rows -----------------------------------------------------------------------------------------


def test_rows_match_a_local_computation_and_use_both_workers(
    idc: TCIAClient, cluster: Any, archive_server: ArchiveServer, bucket: IDCBucketServer,
    volume_uids: list[str],
) -> None:
    frame = archive_server.archive.series
    selection = frame[frame["SeriesInstanceUID"].isin(volume_uids)]
    table = idc.map_series(stats, selection, client=cluster, progress=False)
    assert list(table.columns) == list(COLUMNS)
    assert table["SeriesInstanceUID"].tolist() == selection["SeriesInstanceUID"].tolist()
    assert (table["status"] == "done").all(), table["error"].tolist()
    for row in table.itertuples():
        assert row.result == _expected(archive_server, row.SeriesInstanceUID)
        assert row.error is None and row.seconds > 0
    workers = set(cluster.scheduler_info()["workers"])
    assert set(table["worker"]) == workers and len(workers) == 2
    # every object came from the bucket, to the workers; the caller's own cache is untouched
    assert bucket.count("GetObject") == sum(
        len(archive_server.archive.instances(u)) for u in volume_uids)
    assert idc.cache.series_uids() == []


def test_workers_keep_separate_caches(idc: TCIAClient, cluster: Any,
                                      volume_uids: list[str]) -> None:
    idc.map_series(file_names, volume_uids, client=cluster, pass_files=True, progress=False)

    def cached(dask_worker: Any) -> list[str]:
        from intake_tcia.retrieval.cache import SeriesCache

        folder = Path(dask_worker.local_directory) / "intake-tcia-cache"
        return SeriesCache(folder).series_uids()

    held = cluster.run(cached)
    assert len(held) == 2
    each = [set(uids) for uids in held.values()]
    assert each[0] | each[1] >= set(volume_uids)


def test_one_index_scan_for_the_cohort_none_on_the_workers(
    idc: TCIAClient, cluster: Any, volume_uids: list[str]
) -> None:
    table = idc.map_series(file_names, volume_uids, client=cluster, pass_files=True,
                           progress=False, cache="settings")
    assert (table["status"] == "done").all()

    def opened_index() -> list[bool]:
        from intake_tcia import cohort

        return ["index" in vars(c.router.idc) for c in cohort._clients.values()]

    found = cluster.run(opened_index)
    assert all(found.values()) and not any(any(v) for v in found.values())
    # the caller located the whole cohort (from its location table or one index scan)
    assert set(volume_uids) <= set(idc.router.idc._located)


def test_file_lists_and_local_threads(idc: TCIAClient, archive_server: ArchiveServer,
                                      volume_uids: list[str]) -> None:
    table = idc.map_series(file_names, volume_uids[:4], pass_files=True, progress=False)
    assert set(table["worker"]) == {"local"}
    assert (table["status"] == "done").all()
    for row in table.itertuples():
        instances = archive_server.archive.instances(row.SeriesInstanceUID)
        assert len(row.result) == len(instances)
        assert all(name.endswith(".dcm") for name in row.result)
    assert set(idc.cache.series_uids()) == set(volume_uids[:4])  # the client's own cache


def test_a_func_that_raises_fails_its_row_only(idc: TCIAClient, cluster: Any,
                                               archive_server: ArchiveServer,
                                               volume_uids: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from intake_tcia import cohort

    monkeypatch.setattr(cohort, "_IN_FLIGHT", 2)  # the rest submitted as rows land
    bad = volume_uids[1]
    table = idc.map_series(functools.partial(fail_on, bad), volume_uids, client=cluster,
                           progress=False)
    failed = table[table["status"] == "failed"]
    assert failed["SeriesInstanceUID"].tolist() == [bad]
    assert failed["error"].iloc[0] == f"ArithmeticError: no statistics for {bad}"
    assert failed["result"].iloc[0] is None
    done = table[table["status"] == "done"]
    assert len(done) == len(volume_uids) - 1


def test_nbia_backend_on_the_cluster(server: ArchiveServer, cluster: Any, tmp_path: Path,
                                     volume_uids: list[str], archive_server: ArchiveServer
                                     ) -> None:
    nbia = TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                      cache_dir=tmp_path / "cache", backend="nbia")
    # the workers' own caches hold these series from the tests before: this run uses cache_dir
    table = nbia.map_series(stats, volume_uids[:3], client=cluster, progress=False,
                            cache="settings")
    assert (table["status"] == "done").all(), table["error"].tolist()
    assert set(nbia.cache.series_uids()) == set(volume_uids[:3])
    assert [r.result for r in table.itertuples()] == [
        _expected(archive_server, u) for u in volume_uids[:3]]
    assert server.count("getImage") == 3


# -- bad input ------------------------------------------------------------------------------------


def test_a_func_that_cannot_be_pickled_fails_before_any_task(
    idc: TCIAClient, cluster: Any, bucket: IDCBucketServer, volume_uids: list[str]
) -> None:
    lock = threading.Lock()

    def locked(volume: Any) -> int:
        with lock:
            return 1

    with pytest.raises(TypeError, match="cannot be pickled"):
        idc.map_series(locked, volume_uids, client=cluster, progress=False)
    assert bucket.requests == []
    assert cluster.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0


@pytest.mark.parametrize("series", [
    ["1.2.3", "not a uid"],
    pd.DataFrame({"uid": ["1.2.3"]}),
    42,
    [1.5],
])
def test_series_of_the_wrong_shape_give_downloads_errors(idc: TCIAClient, tmp_path: Path,
                                                         series: Any) -> None:
    with pytest.raises((TypeError, ValueError)) as ours:
        idc.map_series(stats, series, progress=False)
    with pytest.raises((TypeError, ValueError)) as theirs:
        idc.download(series, tmp_path / "dest", progress=False)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)


def test_bad_options(idc: TCIAClient) -> None:
    with pytest.raises(TypeError, match="callable"):
        idc.map_series("stats", [])
    with pytest.raises(TypeError, match="distributed.Client"):
        idc.map_series(stats, [], client=object())
    with pytest.raises(ValueError, match="cache"):
        idc.map_series(stats, [], cache="elsewhere")
    with pytest.raises(ValueError, match="retries"):
        idc.map_series(stats, [], retries=-1)
    empty = idc.map_series(stats, [])
    assert list(empty.columns) == list(COLUMNS) and empty.empty


# -- fault tolerance ------------------------------------------------------------------------------


def test_a_worker_killed_mid_task_costs_a_retry_not_a_row(
    idc: TCIAClient, cluster: Any, tmp_path: Path, archive_server: ArchiveServer,
    volume_uids: list[str],
) -> None:
    marker = tmp_path / "died"
    before = set(cluster.scheduler_info()["workers"])
    table = idc.map_series(functools.partial(die_once, str(marker)), volume_uids,
                           client=cluster, results=tmp_path / "results", progress=False)
    assert marker.exists()  # a worker did die
    assert table["SeriesInstanceUID"].tolist() == volume_uids  # each once, in order
    assert (table["status"] == "done").all(), table["error"].tolist()
    assert [r.result for r in table.itertuples()] == [
        _expected(archive_server, u) for u in volume_uids]
    kept = read_results(tmp_path / "results")
    assert sorted(kept["SeriesInstanceUID"]) == sorted(volume_uids)
    assert set(kept["status"]) == {"done"}
    cluster.wait_for_workers(2, timeout=60)
    assert set(cluster.scheduler_info()["workers"]) != before  # the nanny started a new one


def test_a_rerun_with_results_asks_nothing_for_done_series(
    idc: TCIAClient, cluster: Any, tmp_path: Path, bucket: IDCBucketServer,
    archive_server: ArchiveServer, volume_uids: list[str],
) -> None:
    results = tmp_path / "results"

    def fresh(name: str) -> TCIAClient:  # the same settings, an empty cache shared by workers
        return TCIAClient(settings=idc.settings.replace(cache_dir=tmp_path / name))

    first = fresh("one").map_series(stats, volume_uids, client=cluster, results=results,
                                    progress=False, cache="settings")
    assert (first["status"] == "done").all()
    assert sorted(p.name for p in results.iterdir()) == sorted(f"{u}.parquet" for u in volume_uids)
    kept = read_results(results)
    assert kept.set_index("SeriesInstanceUID")["result"].to_dict() == dict(
        zip(first["SeriesInstanceUID"], first["result"], strict=True))

    # with an empty cache, only the bucket could answer: nothing is asked
    bucket.clear_log()
    again = fresh("two").map_series(stats, volume_uids, client=cluster, results=results,
                                    progress=False, cache="settings")
    assert bucket.requests == []
    pd.testing.assert_frame_equal(again, first)

    # one row lost: only that series is asked for again
    lost = volume_uids[2]
    (results / f"{lost}.parquet").unlink()
    bucket.clear_log()
    third = fresh("three").map_series(stats, volume_uids, client=cluster, results=results,
                                      progress=False, cache="settings")
    assert (third["status"] == "done").all()
    from intake_tcia.testing.idc import crdc_series_uuid

    asked = {r.params.get("prefix") or r.params["key"].split("/")[0] + "/"
             for r in bucket.requests}
    assert asked == {crdc_series_uuid(lost) + "/"}
    assert third.loc[2, "result"] == _expected(archive_server, lost)
    assert third.drop(index=2)["worker"].tolist() == first.drop(index=2)["worker"].tolist()


def test_a_worker_killed_while_fetching_publishes_no_half_series(
    idc: TCIAClient, cluster: Any, tmp_path: Path, bucket: IDCBucketServer,
    volume_uids: list[str], archive_server: ArchiveServer,
) -> None:
    import signal

    from intake_tcia.retrieval.cache import SeriesCache

    victim_uid = max(volume_uids, key=lambda u: len(archive_server.archive.instances(u)))
    # one of the victim's objects hangs: its worker is killed with the others on disk
    bucket.faults.add("hang", endpoint="GetObject", series=victim_uid, seconds=8)
    pids = cluster.run(os.getpid)
    box: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: box.update(table=idc.map_series(
        stats, volume_uids, client=cluster, progress=False, retries=0, cache="settings")))
    runner.start()
    deadline = time.monotonic() + 60
    worker = None
    while worker is None and time.monotonic() < deadline:
        hung = [r for r in bucket.requests if r.endpoint == "GetObject" and r.status is None
                and r.params["key"].startswith(_prefix(victim_uid))]
        if hung:
            worker = next((w for w, keys in cluster.processing().items()
                           if any(str(k).endswith(victim_uid) for k in keys)), None)
        time.sleep(0.05)
    assert worker is not None, "the victim's fetch never started"
    os.kill(pids[worker], signal.SIGKILL)
    runner.join(120)
    table = box["table"]
    assert table["SeriesInstanceUID"].tolist() == volume_uids
    assert (table["status"] == "done").all(), table["error"].tolist()
    assert table.set_index("SeriesInstanceUID").loc[victim_uid, "worker"] != worker
    # one cache shared by the workers (a dead worker's own folder goes with it): the killed
    # fetch left only staging behind, the retry published the whole series, verified
    shared = SeriesCache(idc.cache_dir)
    assert sorted(shared.series_uids()) == sorted(volume_uids)
    assert all(shared.verify(uid) for uid in volume_uids)
    assert len(shared.get(victim_uid).files) == len(archive_server.archive.instances(victim_uid))
    cluster.wait_for_workers(2, timeout=60)


def _prefix(series_uid: str) -> str:
    from intake_tcia.testing.idc import crdc_series_uuid

    return crdc_series_uuid(series_uid) + "/"


# -- to_dask of a series source on backend idc ----------------------------------------------------


def test_to_dask_on_idc_fetches_on_the_workers_not_the_caller(
    idc: TCIAClient, cluster: Any, bucket: IDCBucketServer, archive_server: ArchiveServer,
    volume_uids: list[str],
) -> None:
    import requests

    from intake_tcia.sources import TCIASeriesSource

    uid = max(volume_uids, key=lambda u: len(archive_server.archive.instances(u)))
    paths = [p for _, p in archive_server.archive.instances(uid)]
    seen: list[tuple[str, str | None]] = []  # what this process asked for
    session = requests.Session()
    session.hooks["response"].append(
        lambda response, **_: seen.append((response.url, response.request.headers.get("Range"))))
    source = TCIASeriesSource(uid, **{k: getattr(idc.settings, k) for k in (
        "api_url", "nlst_api_url", "cache_dir", "backend", "idc_url", "idc_index")})
    source._client = TCIAClient(settings=idc.settings, session=session)

    array = source.to_dask()
    assert array.numblocks[0] == len(paths)
    gets = [(url, r) for url, r in seen if "list-type" not in url]
    assert len(gets) == len(paths) and all(r is not None for _, r in gets)  # heads only
    bucket.clear_log()

    computed = cluster.compute(array, sync=True)
    np.testing.assert_array_equal(computed, volume_from_files(paths).array)
    whole = [r for r in bucket.requests if r.endpoint == "GetObject" and "range" not in r.params]
    assert len(whole) == len(paths)  # one GET per slice, made by the workers
    assert len(seen) == len(gets) + 1  # and none by the caller (+1: the listing)
    assert idc.cache.series_uids() == []  # nothing cached anywhere here


def test_to_xarray_lazy_on_idc_computes_in_local_threads(
    idc: TCIAClient, bucket: IDCBucketServer, archive_server: ArchiveServer,
    volume_uids: list[str],
) -> None:
    from intake_tcia.sources import TCIASeriesSource

    uid = volume_uids[0]
    paths = [p for _, p in archive_server.archive.instances(uid)]
    source = TCIASeriesSource(uid, **{k: getattr(idc.settings, k) for k in (
        "api_url", "nlst_api_url", "cache_dir", "backend", "idc_url", "idc_index")})
    lazy = source.to_xarray(lazy=True)
    expected = volume_from_files(paths)
    np.testing.assert_array_equal(lazy.values, expected.array)
    np.testing.assert_allclose(lazy.attrs["affine"], expected.affine)


def np_mean(volume: Any) -> Any:
    return {"mean": np.float32(np.asarray(volume.array).mean()), "first": volume.array[0, 0]}


def as_set(volume: Any) -> Any:
    return {1, 2}


def test_results_are_kept_as_json_and_returned_as_kept(
    idc: TCIAClient, tmp_path: Path, archive_server: ArchiveServer, volume_uids: list[str]
) -> None:
    uids = volume_uids[:2]
    table = idc.map_series(np_mean, uids, results=tmp_path / "r", progress=False)
    assert (table["status"] == "done").all()
    for row in table.itertuples():
        array = volume_from_files([p for _, p in archive_server.archive.instances(
            row.SeriesInstanceUID)]).array
        assert row.result == {"mean": pytest.approx(float(np.float32(array.mean()))),
                              "first": array[0, 0].tolist()}
        assert type(row.result["mean"]) is float and type(row.result["first"]) is list
    assert read_results(tmp_path / "r")["result"].tolist() == table["result"].tolist()

    bad = idc.map_series(as_set, uids, results=tmp_path / "bad", progress=False)
    assert set(bad["status"]) == {"failed"}
    assert bad["error"].str.startswith("TypeError: the result holds a set").all()
    assert idc.map_series(as_set, uids, progress=False)["result"].tolist() == [{1, 2}] * 2


def test_keep_false_removes_only_what_each_task_fetched(
    idc: TCIAClient, archive_server: ArchiveServer, volume_uids: list[str]
) -> None:
    uids = volume_uids[:3]
    idc.fetch_series(uids[0])  # there before: stays
    table = idc.map_series(stats, uids, keep=False, progress=False)
    assert (table["status"] == "done").all()
    assert [r.result for r in table.itertuples()] == [_expected(archive_server, u) for u in uids]
    assert idc.cache.series_uids() == [uids[0]]
    files = idc.map_series(file_names, uids[1:], keep=False, pass_files=True, progress=False)
    assert (files["status"] == "done").all() and idc.cache.series_uids() == [uids[0]]


def test_a_progress_bar_over_series(idc: TCIAClient, volume_uids: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    idc.map_series(file_names, volume_uids[:3], pass_files=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "series" in err


def test_to_dask_on_idc_reads_one_frame_of_a_multiframe_object_by_range(
    idc: TCIAClient, cluster: Any, bucket: IDCBucketServer, archive_server: ArchiveServer,
) -> None:
    import pydicom

    from intake_tcia.sources import TCIASeriesSource

    dose = [u for u in archive_server.archive.series_uids()
            if archive_server.archive.series.set_index("SeriesInstanceUID").loc[u, "Modality"]
            == "RTDOSE"][0]
    (path,) = [p for _, p in archive_server.archive.instances(dose)]
    frames = int(pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames)
    source = TCIASeriesSource(dose, **{k: getattr(idc.settings, k) for k in (
        "api_url", "nlst_api_url", "cache_dir", "backend", "idc_url", "idc_index")})
    array = source.to_dask()
    assert array.numblocks[0] == frames > 1
    bucket.clear_log()
    np.testing.assert_array_equal(cluster.compute(array, sync=True),
                                  volume_from_files([path]).array)
    gets = [r for r in bucket.requests if r.endpoint == "GetObject"]
    assert len(gets) == frames and all("range" in r.params for r in gets)
    sizes = {r.bytes_sent for r in gets}
    assert len(sizes) == 1 and sizes.pop() * frames < path.stat().st_size

"""Tests of series retrieval against the sample archive: streaming, verification, faults, hostile
zips, concurrency across processes, interruption, resumption and the download folder layout."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import time
import zipfile
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from intake_tcia.client import TCIAClient
from intake_tcia.errors import (
    DownloadError,
    TCIAConnectionError,
    TCIAHTTPError,
    TCIAIntegrityError,
    UnsafeArchiveError,
)
from intake_tcia.manifest import write_manifest
from intake_tcia.nbia.getimage import extract_series
from intake_tcia.retrieval.cache import LICENSE_NAME, RECORD_NAME
from intake_tcia.testing import ArchiveServer

CT_COLLECTION = "Pydicom-CT-Series"


def _client(server: ArchiveServer, cache: Path, **options: object) -> TCIAClient:
    options = {"retries": 2, "backoff_factor": 0.01, **options}
    return TCIAClient(
        api_url=server.api_url, nlst_api_url=server.nlst_api_url, cache_dir=cache, **options
    )


@pytest.fixture
def client(server: ArchiveServer, tmp_cache: Path) -> TCIAClient:
    with _client(server, tmp_cache) as c:
        yield c


@pytest.fixture
def ct_uid(server: ArchiveServer) -> str:
    """The largest series with pixel data: 10 CT slices, 393 kB."""
    series = server.archive.series
    return series.loc[series["Collection"] == CT_COLLECTION].sort_values("ImageCount")[
        "SeriesInstanceUID"
    ].iloc[-1]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _archive_md5s(server: ArchiveServer, uid: str) -> dict[str, str]:
    return {sop: _md5(path) for sop, path in server.archive.instances(uid)}


def _assert_cache_clean(cache: Path, uid: str) -> None:
    """Nothing of the series is published, and no staging folder is left behind."""
    assert not (cache / "series" / uid).exists()
    staging = cache / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


# -- one series ----------------------------------------------------------------------------------


def test_fetch_series_verifies_caches_and_keeps_the_license(
    server: ArchiveServer, client: TCIAClient, ct_uid: str
) -> None:
    series = client.fetch_series(ct_uid)
    assert server.count("getImage") == 1
    assert {i.sop_instance_uid: i.md5 for i in series.instances} == _archive_md5s(server, ct_uid)
    assert {i.sop_instance_uid: _md5(series.path / i.name) for i in series.instances} == (
        _archive_md5s(server, ct_uid)
    )
    assert series.license_text and (series.path / LICENSE_NAME).read_text() == series.license_text
    assert series.path.parent == client.cache_dir / "series"
    server.clear_log()
    again = TCIAClient(api_url=server.api_url, cache_dir=client.cache_dir).fetch_series(ct_uid)
    assert again == series
    assert server.count() == 0  # from the cache, by another client, with no request


def test_files_appear_in_staging_while_the_zip_is_still_arriving(
    server: ArchiveServer, client: TCIAClient, ct_uid: str
) -> None:
    import threading

    client.fetch_series(ct_uid)
    wire = [r for r in server.requests if r.endpoint == "getImage"][-1].bytes_sent
    client.cache.remove(ct_uid)
    server.clear_log()
    server.faults.add("stall", endpoint="getImage", series=ct_uid, after_bytes=wire // 2,
                      seconds=4)
    done: list[object] = []
    fetching = threading.Thread(target=lambda: done.append(client.fetch_series(ct_uid)))
    fetching.start()
    staged: list[Path] = []
    give_up = time.monotonic() + 3
    while not staged and time.monotonic() < give_up:
        staged = sorted((client.cache_dir / "staging").glob("*/series/*.dcm"))
        time.sleep(0.02)
    sent = server.requests[-1].bytes_sent  # the server is stalled half way
    published = client.cache.get(ct_uid)
    fetching.join(30)
    assert staged and len(staged) < 10  # some files are written, not all of them
    assert sent == wire // 2 < wire
    assert published is None  # nothing is published before the whole zip is verified
    assert len(done[0].instances) == 10 and server.count("getImage") == 1


@pytest.mark.parametrize("code", [429, 500, 503])
def test_error_statuses_are_retried(
    server: ArchiveServer, client: TCIAClient, ct_uid: str, code: int
) -> None:
    server.faults.add("status", endpoint="getImage", series=ct_uid, times=2, code=code,
                      retry_after=0)
    assert len(client.fetch_series(ct_uid).instances) == 10
    assert server.count("getImage") == 3


def test_retry_after_is_honoured(server: ArchiveServer, client: TCIAClient, ct_uid: str) -> None:
    server.faults.add("status", endpoint="getImage", series=ct_uid, code=503, retry_after=1)
    start = time.monotonic()
    client.fetch_series(ct_uid)
    assert time.monotonic() - start >= 0.9
    assert server.count("getImage") == 2


def test_a_status_that_persists_raises_and_leaves_nothing(
    server: ArchiveServer, client: TCIAClient, ct_uid: str
) -> None:
    server.faults.add("status", endpoint="getImage", series=ct_uid, times=10, code=500)
    with pytest.raises(TCIAHTTPError) as info:
        client.fetch_series(ct_uid)
    assert info.value.status == 500
    assert server.count("getImage") == 3  # 1 + retries
    _assert_cache_clean(client.cache_dir, ct_uid)


@pytest.mark.parametrize(
    ("kind", "error"),
    [("reset", TCIAConnectionError), ("truncate", TCIAIntegrityError),
     ("wrong_md5", TCIAIntegrityError)],
)
def test_broken_bodies_are_retried_then_raise_naming_the_series(
    server: ArchiveServer, client: TCIAClient, ct_uid: str, kind: str, error: type
) -> None:
    server.faults.add(kind, endpoint="getImage", series=ct_uid, times=1)
    series = client.fetch_series(ct_uid)
    assert server.count("getImage") == 2
    assert {i.sop_instance_uid: i.md5 for i in series.instances} == _archive_md5s(server, ct_uid)

    client.cache.remove(ct_uid)
    server.clear_log()
    server.faults.add(kind, endpoint="getImage", series=ct_uid, times=3)
    with pytest.raises(error, match=ct_uid) as info:
        client.fetch_series(ct_uid)
    assert not isinstance(info.value, UnsafeArchiveError)
    assert server.count("getImage") == 3
    _assert_cache_clean(client.cache_dir, ct_uid)


def test_latency_and_read_timeouts(server: ArchiveServer, tmp_cache: Path, ct_uid: str) -> None:
    server.faults.latency = 0.3
    with _client(server, tmp_cache, timeout=(2.0, 0.1), retries=1) as impatient:
        with pytest.raises(TCIAConnectionError):
            impatient.fetch_series(ct_uid)
    _assert_cache_clean(tmp_cache, ct_uid)
    with _client(server, tmp_cache) as patient:
        assert len(patient.fetch_series(ct_uid).instances) == 10


@pytest.mark.parametrize("kind", ["absolute_path", "dotdot", "symlink", "duplicate", "bomb"])
def test_unsafe_archives_are_refused_without_retry(
    server: ArchiveServer, client: TCIAClient, ct_uid: str, kind: str, tmp_path: Path
) -> None:
    server.faults.add(kind, endpoint="getImage", series=ct_uid, times=5)
    before = set(os.listdir(tmp_path))
    with pytest.raises(UnsafeArchiveError, match=ct_uid):
        client.fetch_series(ct_uid)
    assert server.count("getImage") == 1
    _assert_cache_clean(client.cache_dir, ct_uid)
    assert set(os.listdir(tmp_path)) == before  # nothing written next to the cache
    assert not any(client.cache_dir.rglob("*evil*")) and not any(client.cache_dir.rglob("link*"))


def test_an_interrupt_mid_download_leaves_the_cache_consistent(
    server: ArchiveServer, client: TCIAClient, ct_uid: str
) -> None:
    def interrupt(n: int) -> None:
        if n > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.router.fetch_series(ct_uid, progress=interrupt)
    _assert_cache_clean(client.cache_dir, ct_uid)
    with client.cache.lock(ct_uid, timeout=0):  # released
        pass
    assert len(client.fetch_series(ct_uid).instances) == 10


def _fetch_in_child(api_url: str, cache: str, uid: str, ready, go, results) -> None:
    client = TCIAClient(api_url=api_url, cache_dir=cache, retries=0)
    ready.release()
    go.wait(30)
    series = client.fetch_series(uid)
    results.put(sorted((i.name, _md5(series.path / i.name), i.md5) for i in series.instances))


def test_two_processes_fetch_one_series_once(
    server: ArchiveServer, tmp_cache: Path, ct_uid: str
) -> None:
    server.faults.bandwidth = 400_000  # about a second per download, so the two overlap
    ctx = multiprocessing.get_context("spawn")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    children = [
        ctx.Process(target=_fetch_in_child,
                    args=(server.api_url, str(tmp_cache), ct_uid, ready, go, results))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    for _ in children:
        assert ready.acquire(timeout=60)
    go.set()
    listings = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert server.count("getImage") == 1
    assert listings[0] == listings[1]
    assert all(actual == expected for _, actual, expected in listings[0])
    assert len(listings[0]) == 10


# -- many series into a folder -------------------------------------------------------------------


def test_download_layout_copies_and_statuses(
    server: ArchiveServer, client: TCIAClient, tmp_path: Path
) -> None:
    uids = server.archive.series_uids(CT_COLLECTION) + server.archive.series_uids("NLST")[:1]
    dest = tmp_path / "dest"
    table = client.download(uids, dest, progress=False)
    assert list(table.columns) == ["SeriesInstanceUID", "status", "path", "files", "bytes", "error"]
    assert table["status"].tolist() == ["downloaded"] * len(uids)
    assert table["error"].isna().all()
    rows = server.archive.series.set_index("SeriesInstanceUID")
    for row in table.itertuples():
        meta = rows.loc[row.SeriesInstanceUID]
        expected = dest / meta.Collection / meta.PatientID / meta.StudyInstanceUID / (
            row.SeriesInstanceUID)
        assert Path(row.path) == expected
        assert row.files == meta.ImageCount and row.bytes == meta.FileSize
        cached = client.cache.get(row.SeriesInstanceUID)
        for source, placed in zip(cached.files, sorted(expected.glob("*.dcm")), strict=True):
            assert source.name == placed.name
            # the bytes were written once: a reflink (its own inode) or a hard link of the cache's
            assert os.path.samefile(source, placed) or os.stat(placed).st_nlink == 1
            assert source.read_bytes() == placed.read_bytes()
        assert (expected / LICENSE_NAME).exists()
    assert server.count("getImage") == len(uids)
    assert server.count("getSeriesMetadata") <= 2  # the layout's fields, all in one go per host
    assert server.count("getImage", host="nlst") == 1  # NLST routed by its metadata

    server.clear_log()
    again = client.download(uids, dest, progress=False)
    assert again["status"].tolist() == ["cached"] * len(uids)
    assert again["path"].tolist() == table["path"].tolist()
    assert server.count() == 0  # complete in cache and in dest: no request at all


def test_a_resumed_download_fetches_only_what_is_missing(
    server: ArchiveServer, client: TCIAClient, tmp_path: Path
) -> None:
    uids = server.archive.series_uids("NLST")
    broken = uids[1]
    server.faults.add("wrong_md5", endpoint="getImage", series=broken, times=3)
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match=broken) as info:
        client.download(uids, dest, layout="{SeriesInstanceUID}", progress=False)
    table = info.value.results
    assert table.set_index("SeriesInstanceUID").loc[broken, "status"] == "failed"
    assert "MD5" in table.set_index("SeriesInstanceUID").loc[broken, "error"]
    assert (table["status"] == "downloaded").sum() == len(uids) - 1
    assert not (dest / broken).exists() and client.cache.get(broken) is None

    # a file deleted from dest is restored from the cache, with no request, and temporaries a
    # killed run left behind are swept away
    done = dest / uids[0]
    victim = sorted(done.glob("*.dcm"))[0]
    victim.unlink()
    stale = done / ".intake-tcia.json.0badc0de.tmp"
    stale.write_text("{half a record")

    server.clear_log()
    table = client.download(uids, dest, layout="{SeriesInstanceUID}", progress=False)
    assert server.count("getImage") == 1
    assert server.requests[-1].params["SeriesInstanceUID"] == broken
    statuses = table.set_index("SeriesInstanceUID")["status"]
    assert statuses[broken] == "downloaded"
    assert (statuses.drop(broken) == "cached").all()
    assert victim.exists()
    assert not stale.exists()


def test_on_error_return_gives_the_table(
    server: ArchiveServer, client: TCIAClient, ct_uid: str, tmp_path: Path
) -> None:
    unknown = "1.2.3.4.5.6.7.8.9"
    table = client.download([ct_uid, unknown], tmp_path / "d", on_error="return",
                            layout="{SeriesInstanceUID}", progress=False)
    row = table.set_index("SeriesInstanceUID").loc[unknown]
    assert row.status == "failed" and row.path is None and row.files == 0
    assert unknown in row.error or "granted" in row.error or "no series" in row.error
    assert table.set_index("SeriesInstanceUID").loc[ct_uid, "status"] == "downloaded"


def test_arguments_are_validated_before_any_request(
    server: ArchiveServer, client: TCIAClient, ct_uid: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"'1\.\.3'.*'bad'"):
        client.download([ct_uid, "1..3", "bad"], tmp_path)
    with pytest.raises(ValueError, match="on_error"):
        client.download(ct_uid, tmp_path, on_error="ignore")
    with pytest.raises(ValueError, match="Bogus"):
        client.download(ct_uid, tmp_path, layout="{Collection}/{Bogus}/{SeriesInstanceUID}")
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        client.download(ct_uid, tmp_path, layout="{Collection}")
    with pytest.raises(ValueError, match="workers"):
        client.download(ct_uid, tmp_path, workers=0)
    assert server.count() == 0


def test_layout_fields_cannot_escape_dest(
    server: ArchiveServer, client: TCIAClient, ct_uid: str, tmp_path: Path
) -> None:
    row = server.archive.series.set_index("SeriesInstanceUID").loc[[ct_uid]].reset_index()
    row["PatientID"] = "../../x"
    row["Collection"] = "/etc"
    dest = tmp_path / "dest"
    table = client.download(row, dest, progress=False)
    path = Path(table.loc[0, "path"])
    assert path.is_relative_to(dest) and len(path.relative_to(dest).parts) == 4
    assert ".." not in path.relative_to(dest).parts
    assert len(list(path.glob("*.dcm"))) == 10
    assert server.count("getSeriesMetadata") == 0  # the DataFrame had every field
    assert server.count("getSeriesSize") == 0  # and the size, for the zip-bomb limit


def test_editing_a_downloaded_file_never_changes_a_verified_series(
    server: ArchiveServer, client: TCIAClient, ct_uid: str, tmp_path: Path
) -> None:
    table = client.download(ct_uid, tmp_path / "dest", progress=False)
    placed = sorted(Path(table.loc[0, "path"]).glob("*.dcm"))[0]
    ds = pydicom.dcmread(placed)
    ds.PatientName = "Edited^InDest"
    ds.save_as(placed)  # in place: through a hard link, the cache's file is this one
    stat = placed.stat()
    os.utime(placed, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))  # even with mtime set back
    cached = client.cache.get(ct_uid)  # the cache never serves the edit as verified
    assert cached is None or all(b"Edited^InDest" not in f.read_bytes() for f in cached.files)
    server.clear_log()
    assert "Edited" not in str(client.read_series(ct_uid)[0].PatientName)
    assert server.count("getImage") == (0 if cached is not None else 1)
    cached = client.cache.get(ct_uid)
    assert cached is not None and client.cache.verify(ct_uid)
    assert all(b"Edited^InDest" not in f.read_bytes() for f in cached.files)
    assert b"Edited^InDest" in placed.read_bytes()  # the user's edit stays theirs


def test_a_cached_file_changed_in_place_is_noticed_and_fetched_again(
    server: ArchiveServer, client: TCIAClient, ct_uid: str, tmp_path: Path
) -> None:
    cached = client.fetch_series(ct_uid)
    victim = cached.files[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # same size
    victim.write_bytes(bytes(data))
    assert client.cache.get(ct_uid) is None  # its times gave it away, its MD5 confirmed it
    server.clear_log()
    again = client.fetch_series(ct_uid)
    assert server.count("getImage") == 1 and again.files[0].read_bytes() != bytes(data)
    # a change that keeps size and mtime moves the change time, which nobody can set back
    stat = again.files[0].stat()
    again.files[0].write_bytes(bytes(data))
    os.utime(again.files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert client.cache.get(ct_uid) is None
    assert not client.cache.verify(ct_uid)
    assert not client.cache.series_path(ct_uid).exists()


def test_layouts_that_let_two_series_share_a_folder_are_refused(
    server: ArchiveServer, client: TCIAClient, tmp_path: Path
) -> None:
    uids = server.archive.series_uids(CT_COLLECTION)[:2]
    with pytest.raises(ValueError, match="in one folder"):
        client.download(uids, tmp_path, layout="x/{SeriesInstanceUID}/..", progress=False)
    glued = pd.DataFrame({"SeriesInstanceUID": ["23.45", "3.45"], "PatientID": ["1", "12"]})
    with pytest.raises(ValueError, match="in one folder"):
        client.download(glued, tmp_path, layout="{PatientID}{SeriesInstanceUID}", progress=False)
    assert server.count() == 0
    # across two calls: the second series is not put over the first
    first = client.download(uids[0], tmp_path, layout="x/{SeriesInstanceUID}/..", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "x").iterdir()}
    second = client.download(uids[1], tmp_path, layout="x/{SeriesInstanceUID}/..",
                             on_error="return", progress=False)
    assert first.loc[0, "status"] == "downloaded" and second.loc[0, "status"] == "failed"
    assert "already holds series" in second.loc[0, "error"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "x").iterdir()} == before


def test_a_user_symlink_under_dest_fails_only_the_series_below_it(
    server: ArchiveServer, client: TCIAClient, tmp_path: Path
) -> None:
    rows = server.archive.series.drop_duplicates("PatientID").head(2)
    assert len(rows) == 2
    dest, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    (dest / rows.iloc[0]["PatientID"]).symlink_to(elsewhere)
    table = client.download(rows, dest, layout="{PatientID}/{SeriesInstanceUID}",
                            on_error="return", progress=False)
    assert table["status"].tolist() == ["failed", "downloaded"]
    assert "outside" in table.loc[0, "error"]
    assert list(elsewhere.iterdir()) == []
    assert server.count("getImage") == 1


def test_a_slow_zip_meets_series_timeout(
    server: ArchiveServer, ct_uid: str, tmp_path: Path
) -> None:
    client = TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                        cache_dir=tmp_path / "cache", retries=2, series_timeout=1.0)
    server.faults.bandwidth = 20_000  # the series' zip would take about 30 s
    start = time.monotonic()
    table = client.download(ct_uid, tmp_path / "dest", on_error="return", progress=False)
    server.faults.bandwidth = None
    assert time.monotonic() - start < 6
    assert "series_timeout" in table.loc[0, "error"] and table.loc[0, "status"] == "failed"
    assert client.cache.get(ct_uid) is None


def test_windows_reserved_names_are_never_folder_names(
    server: ArchiveServer, client: TCIAClient, ct_uid: str, tmp_path: Path
) -> None:
    row = server.archive.series.set_index("SeriesInstanceUID").loc[[ct_uid]].reset_index()
    row["Collection"] = "CON"
    row["PatientID"] = "aux.txt"
    table = client.download(row, tmp_path, progress=False)
    parts = Path(table.loc[0, "path"]).relative_to(tmp_path).parts
    assert parts[:2] == ("_CON", "_aux.txt")


def test_dataframe_collection_routes_nlst(
    server: ArchiveServer, client: TCIAClient, tmp_path: Path
) -> None:
    nlst = server.archive.series
    nlst = nlst[nlst["Collection"] == "NLST"][["SeriesInstanceUID", "Collection"]]
    table = client.download(nlst, tmp_path, layout="{Collection}/{SeriesInstanceUID}",
                            progress=False)
    assert (table["status"] == "downloaded").all()
    assert server.count(host="main") == 0
    assert server.count("getImage", host="nlst") == len(nlst)


def test_manifest_input_and_progress_bar(
    server: ArchiveServer, client: TCIAClient, ct_uid: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = write_manifest([ct_uid], tmp_path / "m.tcia")
    client.download(manifest, tmp_path / "loud", layout="{SeriesInstanceUID}")
    assert "B" in capsys.readouterr().err  # tqdm counts bytes on stderr
    client.download(str(manifest), tmp_path / "quiet", layout="{SeriesInstanceUID}",
                    progress=False)
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "quiet" / ct_uid / RECORD_NAME).exists()
    assert server.count("getImage") == 1


def _bar_percentages(err: str) -> list[int]:
    """The percentages a text tqdm bar drew, in order (every state: TQDM_MININTERVAL=0)."""
    return [int(p) for p in re.findall(r"series:\s+(\d+)%", err)]


def test_the_progress_bar_is_drawn_only_for_transfers_and_only_moves_forward(
    server: ArchiveServer, client: TCIAClient, ct_uid: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    client.download([], tmp_path / "none")
    assert capsys.readouterr().err == "nothing to download: the selection names no series\n"
    with pytest.raises(DownloadError):
        client.download(["1.2.3.4"], tmp_path / "unknown")  # fails before any byte: no bar
    assert "series:" not in capsys.readouterr().err
    # a first attempt cut off after 150 kB, then retried: the bar never goes back
    server.faults.add("reset", endpoint="getImage", series=ct_uid, after_bytes=150_000)
    server.faults.bandwidth = 2_000_000  # several states to draw
    client.download([ct_uid], tmp_path / "a")
    server.faults.bandwidth = None
    drawn = _bar_percentages(capsys.readouterr().err)
    assert server.count("getImage") == 2
    assert len(drawn) >= 3 and drawn == sorted(drawn) and drawn[-1] == 100, drawn
    client.download([ct_uid], tmp_path / "b")  # from the cache: no transfer, no bar
    assert capsys.readouterr().err == ""


def test_read_series_is_sorted_along_the_normal(client: TCIAClient, ct_uid: str) -> None:
    import numpy as np

    datasets = client.read_series(ct_uid)
    assert len(datasets) == 10
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [float(normal @ np.asarray(ds.ImagePositionPatient, float)) for ds in datasets]
    assert positions == sorted(positions)


# -- zips made by hand -------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return path


DICOM_LIKE = b"\0" * 128 + b"DICM" + b"\0" * 40  # the DICOM prefix, no SOPInstanceUID


def _dicom(n: int = 1) -> bytes:
    """A small complete DICOM instance (no pixels) of series 1.2.3, SOPInstanceUID 1.2.3.n."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = f"1.2.3.{n}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2", "1.2.3"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _md5_csv(members: dict[str, bytes]) -> bytes:
    rows = [f"{name},{hashlib.md5(body).hexdigest()}" for name, body in members.items()]
    return ("Filename,MD5Hash\n" + "\n".join(rows) + "\n").encode()


def test_a_zip_without_md5s_or_with_missing_files_is_refused(tmp_path: Path) -> None:
    body = _dicom()
    bare = _zip(tmp_path / "a.zip", {"LICENSE": b"x", "1-1.dcm": body})
    with pytest.raises(TCIAIntegrityError, match="md5hashes.csv"):
        extract_series(bare, tmp_path / "a", "1.2.3", limit=10**6)
    missing = _zip(tmp_path / "b.zip", {
        "1-1.dcm": body,
        "md5hashes.csv": f"Filename,MD5Hash\n1-1.dcm,{hashlib.md5(body).hexdigest()}\n"
                         "1-2.dcm,0123456789abcdef0123456789abcdef\n".encode(),
    })
    with pytest.raises(TCIAIntegrityError, match="missing from the zip"):
        extract_series(missing, tmp_path / "b", "1.2.3", limit=10**6)
    nested = _zip(tmp_path / "c.zip", {"sub/1-1.dcm": body})
    with pytest.raises(UnsafeArchiveError, match="folder"):
        extract_series(nested, tmp_path / "c", "1.2.3", limit=10**6)
    too_big = _zip(tmp_path / "d.zip", {"1-1.dcm": body})
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        extract_series(too_big, tmp_path / "d", "1.2.3", limit=len(body) - 1)


def test_md5hashes_listing_the_license_is_accepted(tmp_path: Path) -> None:
    files = {"1-1.dcm": _dicom(), "LICENSE": b"CC BY 4.0"}
    made = _zip(tmp_path / "a.zip", {**files, "md5hashes.csv": _md5_csv(files)})
    series = extract_series(made, tmp_path / "a", "1.2.3", limit=10**6)
    assert series.license_text == "CC BY 4.0" and len(series.instances) == 1


def test_a_non_dicom_member_with_a_matching_md5_is_refused(tmp_path: Path) -> None:
    files = {"1-1.dcm": b"<html>not an image</html>"}
    made = _zip(tmp_path / "a.zip", {**files, "md5hashes.csv": _md5_csv(files)})
    with pytest.raises(TCIAIntegrityError, match="not DICOM"):
        extract_series(made, tmp_path / "a", "1.2.3", limit=10**6)


def test_more_files_than_promised_are_refused(tmp_path: Path) -> None:
    files = {f"1-{i}.dcm": _dicom(i) for i in range(3)}
    made = _zip(tmp_path / "a.zip", {**files, "md5hashes.csv": _md5_csv(files)})
    with pytest.raises(UnsafeArchiveError, match="promised 2"):
        extract_series(made, tmp_path / "a", "1.2.3", limit=10**6, max_files=2)
    assert len(extract_series(made, tmp_path / "b", "1.2.3", limit=10**6, max_files=3).instances)


def test_a_member_shorter_than_it_declares_is_refused(tmp_path: Path) -> None:
    files = {"1-1.dcm": DICOM_LIKE}
    made = _zip(tmp_path / "a.zip", {**files, "md5hashes.csv": _md5_csv(files)})
    data = bytearray(made.read_bytes())
    size = len(DICOM_LIKE).to_bytes(4, "little")
    bigger = (len(DICOM_LIKE) + 100).to_bytes(4, "little")
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature) + offset  # the first member's uncompressed size
        assert data[at:at + 4] == size
        data[at:at + 4] = bigger
    made.write_bytes(bytes(data))
    with pytest.raises(TCIAIntegrityError, match="holds 172 bytes, declares 272"):
        extract_series(made, tmp_path / "a", "1.2.3", limit=10**6)


def test_a_member_name_too_long_for_a_file_is_refused(tmp_path: Path) -> None:
    files = {"x" * 300 + ".dcm": DICOM_LIKE}
    made = _zip(tmp_path / "a.zip", {**files, "md5hashes.csv": _md5_csv(files)})
    with pytest.raises(UnsafeArchiveError, match="over 255 bytes"):
        extract_series(made, tmp_path / "a", "1.2.3", limit=10**6)


def test_a_dest_the_file_system_refuses_is_a_storage_error_naming_series_and_path(
    client: TCIAClient, ct_uid: str, tmp_path: Path
) -> None:
    layout = "{SeriesInstanceUID}" + "x" * 300  # a folder name over the 255-byte limit
    dest = tmp_path / "dest"
    table = client.download(ct_uid, dest, layout=layout, on_error="return", progress=False)
    error = table.loc[0, "error"]
    assert error.startswith("TCIAStorageError") and ct_uid in error and "xxxx" in error
    assert not any(p.name.endswith(".tmp") for p in dest.rglob("*"))


def test_download_clears_staging_left_by_dead_processes(
    client: TCIAClient, ct_uid: str, tmp_path: Path
) -> None:
    staging = client.cache_dir / "staging"
    leftovers = [staging / f"{ct_uid}.99999.dead", staging / "1.2.3.99998.dead"]
    for folder in leftovers:
        (folder / "series").mkdir(parents=True)
    client.download([ct_uid], tmp_path / "d", layout="{SeriesInstanceUID}", progress=False)
    assert not any(folder.exists() for folder in leftovers)


_MEASURE_FETCH = """
import sys
from intake_tcia.client import TCIAClient
import intake_tcia.retrieval.download
import pandas, pyarrow.compute, pydicom.filereader  # imported when first used: not the series'

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

client = TCIAClient(api_url=sys.argv[1], cache_dir=sys.argv[2])
before = hwm()
series = client.fetch_series(sys.argv[3])
print(hwm() - before, series.bytes)
"""


def test_peak_memory_does_not_grow_with_series_size(tmp_path: Path) -> None:
    import subprocess
    import sys

    from intake_tcia.testing import SampleArchive

    archive = SampleArchive(tmp_path / "archive")
    uid = archive.add_synthetic_series("Big", "BIG-1", 512)  # 256 MiB of DICOM
    with ArchiveServer(archive) as big:
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE_FETCH, big.api_url, str(tmp_path / "cache"), uid],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
    growth, size = map(float, done.stdout.split())
    assert size > 256e6
    assert growth < 40, f"peak RSS grew {growth:.0f} MB fetching a {size / 1e6:.0f} MB series"

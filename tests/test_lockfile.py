"""Lockfiles: a cohort pinned to exact bytes (``c.lock``), replayed byte for byte from either
backend (``c.download("cohort.lock", dest)``), refused when the bytes changed (nothing placed),
checked in a folder (``intake-tcia verify --lock``), against the sample archive's NBIA server
and loopback S3 bucket."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from intake_tcia.cli import main
from intake_tcia.client import TCIAClient
from intake_tcia.errors import DownloadError, TCIAError
from intake_tcia.lockfile import (
    FORMAT_VERSION,
    LockfileError,
    LockMismatchError,
    check_folder,
    read_lockfile,
)
from intake_tcia.testing import ArchiveServer, IDCBucketServer, write_idc_index
from intake_tcia.testing.idc import object_key
from intake_tcia.testing.idc_releases import PRIOR_COMMENT, prior_series, write_history

DEAD = "http://127.0.0.1:9/"  # nothing listens there: a backend that cannot be reached


@pytest.fixture
def history(server: ArchiveServer, tmp_path: Path) -> Path:
    return write_history(write_idc_index(tmp_path / "index", server.archive), server.archive)


def _client(server: ArchiveServer, bucket: IDCBucketServer, index: Path, cache: Path,
            **options: object) -> TCIAClient:
    options = {"backend": "idc", "api_url": server.api_url,
               "nlst_api_url": server.nlst_api_url, "idc_url": bucket.url, **options}
    return TCIAClient(cache_dir=cache, idc_index=index, retries=1, backoff_factor=0.01,
                      **options)


def _cohort(server: ArchiveServer) -> list[str]:
    """Two CT series with older copies, an NLST series, an RT series: three collections."""
    table = server.archive.table
    nlst = table[(table["Collection"] == "NLST") & (table["Modality"] == "CT")]
    rt = table[table["Modality"] == "RTSTRUCT"]
    return [*prior_series(server.archive), nlst["SeriesInstanceUID"].iloc[0],
            rt["SeriesInstanceUID"].iloc[0]]


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> MD5 of every DICOM file under ``root``."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in root.rglob("*.dcm")}


def _archive_md5s(server: ArchiveServer, uids: list[str]) -> dict[str, str]:
    return {sop: hashlib.md5(path.read_bytes()).hexdigest()
            for uid in uids for sop, path in server.archive.instances(uid)}


@pytest.fixture
def locked(server: ArchiveServer, bucket: IDCBucketServer, history: Path,
           tmp_path: Path) -> Path:
    """A lockfile of the cohort, written by an IDC client."""
    path = tmp_path / "cohort.lock"
    with _client(server, bucket, history, tmp_path / "locker") as c:
        c.lock(_cohort(server), path)
    bucket.clear_log()
    server.reset()
    return path


def test_a_lockfile_pins_every_instance(server: ArchiveServer, locked: Path) -> None:
    data = json.loads(locked.read_text())
    assert data["format_version"] == FORMAT_VERSION
    uids = _cohort(server)
    assert [s["SeriesInstanceUID"] for s in data["series"]] == uids
    md5s = _archive_md5s(server, uids)
    table = server.archive.table.set_index("SeriesInstanceUID")
    for series in data["series"]:
        uid = series["SeriesInstanceUID"]
        assert series["source"] == "idc" and series["idc_version"] == 3
        assert series["nbia_date"] is None and series["crdc_series_uuid"]
        assert series["instance_count"] == len(series["instances"]) == len(
            server.archive.instances(uid))
        assert {i["SOPInstanceUID"]: i["md5"] for i in series["instances"]} == {
            sop: md5s[sop] for sop, _ in server.archive.instances(uid)}
        assert "https://doi.org/" + series["doi"] == table.loc[uid, "DataDescriptionURI"]
        assert series["license"] == table.loc[uid, "LicenseName"]
        assert series["Collection"] == table.loc[uid, "Collection"]
    assert read_lockfile(locked).series_uids == uids


def test_an_nbia_lock_names_its_date(server: ArchiveServer, bucket: IDCBucketServer,
                                     history: Path, tmp_path: Path) -> None:
    uid = _cohort(server)[0]
    with _client(server, bucket, history, tmp_path / "c", backend="nbia") as c:
        lockfile = c.lock([uid], tmp_path / "nbia.lock")
    (series,) = lockfile.series
    assert series.source == "nbia" and series.idc_version is None
    assert len(series.nbia_date) == 10 and series.nbia_date[4] == "-"
    assert bucket.count() == 0


@pytest.mark.parametrize("reachable", ["idc", "nbia"])
def test_a_lock_replays_byte_for_byte_from_either_backend(
        server: ArchiveServer, bucket: IDCBucketServer, history: Path, locked: Path,
        tmp_path: Path, reachable: str) -> None:
    """Only one backend can be reached: the replay gets every locked byte from it."""
    dead = {"api_url": DEAD, "nlst_api_url": DEAD} if reachable == "idc" else {"idc_url": DEAD}
    dest = tmp_path / "dest"
    with _client(server, bucket, history, tmp_path / "reviewer", backend="auto", **dead) as c:
        results = c.download(locked, dest, progress=False)
    assert set(results["source"]) == {reachable}
    assert list(results["SeriesInstanceUID"]) == _cohort(server)
    want = _archive_md5s(server, _cohort(server))
    got = check_folder(locked, dest)
    assert set(got["status"]) == {"ok"} and set(got["SOPInstanceUID"]) == set(want)
    assert sorted(_tree(dest).values()) == sorted(want.values())
    if reachable == "idc":
        assert bucket.count("GetObject") == len(want)
    else:
        assert bucket.count() == 0


def test_an_older_release_lock_replays_its_own_bytes(
        server: ArchiveServer, bucket: IDCBucketServer, history: Path, tmp_path: Path) -> None:
    uid = prior_series(server.archive)[0]
    with _client(server, bucket, history, tmp_path / "c", idc_version=2) as old:
        old.lock([uid], tmp_path / "v2.lock")
    bucket.clear_log()
    with _client(server, bucket, history, tmp_path / "c2") as now:  # today's release client
        now.download(tmp_path / "v2.lock", tmp_path / "dest", progress=False)
    assert {r.params["bucket"] for r in bucket.requests if r.endpoint == "GetObject"} == {
        "idc-open-data-two"}
    import pydicom

    files = list((tmp_path / "dest").rglob("*.dcm"))
    assert {pydicom.dcmread(f).ImageComments for f in files} == {PRIOR_COMMENT}
    assert set(check_folder(tmp_path / "v2.lock", tmp_path / "dest")["status"]) == {"ok"}


def test_changed_bytes_fail_naming_them_and_place_nothing(
        server: ArchiveServer, bucket: IDCBucketServer, history: Path, locked: Path,
        tmp_path: Path) -> None:
    """The bucket's object is replaced (new bytes, its own ETag: IDC's check passes) and NBIA
    cannot be reached: the replay names the series and instance; dest stays empty."""
    uid = _cohort(server)[0]
    sop, path = server.archive.instances(uid)[0]
    key = object_key(uid, sop)
    s3 = bucket._s3()
    original = path.read_bytes()
    s3.put_object(Bucket="idc-open-data", Key=key, Body=original[:-1] + bytes([original[-1] ^ 1]))
    dest = tmp_path / "dest"
    try:
        with _client(server, bucket, history, tmp_path / "reviewer", backend="auto",
                     api_url=DEAD, nlst_api_url=DEAD) as c:
            with pytest.raises(LockMismatchError) as caught:
                c.download(locked, dest, progress=False)
        assert f"series {uid}: from idc: instance {sop}: MD5" in str(caught.value)
        assert list(caught.value.changes) == [uid]
        assert not dest.exists() or not any(dest.iterdir())

        # NBIA still serves the locked bytes: the same replay gets them from there
        with _client(server, bucket, history, tmp_path / "reviewer", backend="auto") as c:
            results = c.download(locked, dest, progress=False)
        assert results.set_index("SeriesInstanceUID").loc[uid, "source"] == "nbia"
        assert set(check_folder(locked, dest)["status"]) == {"ok"}
    finally:
        s3.put_object(Bucket="idc-open-data", Key=key, Body=original)


def test_an_altered_object_in_transit_is_not_placed(
        server: ArchiveServer, bucket: IDCBucketServer, history: Path, locked: Path,
        tmp_path: Path) -> None:
    uid = _cohort(server)[1]
    bucket.faults.add("alter", endpoint="GetObject", series=uid, times=100)
    dest = tmp_path / "dest"
    with _client(server, bucket, history, tmp_path / "reviewer", api_url=DEAD,
                 nlst_api_url=DEAD) as c:
        with pytest.raises(LockMismatchError, match=f"series {uid}: from idc: .*MD5"):
            c.download(locked, dest, progress=False)
    assert not dest.exists() or not any(dest.iterdir())


@pytest.mark.parametrize("edit, message", [
    (lambda d: "{not json", r"line 1 column 2: not JSON"),
    (lambda d: {**d, "format_version": 99}, r"format_version 99 is not one"),
    (lambda d: {"series": d["series"]}, r"no format_version"),
    (lambda d: {**d, "series": [{**d["series"][0], "instance_count": 7}]},
     r"series 1 \(.*\): instance_count is 7 but 2 instances"),
    (lambda d: {**d, "series": [{**d["series"][0], "instances": [
        {"SOPInstanceUID": "1.2.3", "md5": "xyz"}], "instance_count": 1}]},
     r"series 1 \(.*\), instance 1.2.3: md5 must be"),
    (lambda d: {**d, "series": [{**d["series"][0], "source": "ftp"}]},
     r"source must be one of idc, nbia"),
    (lambda d: {**d, "series": [d["series"][0], d["series"][0]]}, r"locked twice"),
])
def test_malformed_lockfiles_fail_before_any_request(
        server: ArchiveServer, bucket: IDCBucketServer, history: Path, locked: Path,
        tmp_path: Path, edit, message) -> None:
    changed = edit(json.loads(locked.read_text()))
    bad = tmp_path / "bad.lock"
    bad.write_text(changed if isinstance(changed, str) else json.dumps(changed, indent=1))
    with _client(server, bucket, history, tmp_path / "reviewer", backend="auto") as c:
        with pytest.raises(LockfileError, match=message):
            c.download(bad, tmp_path / "dest", progress=False)
    assert bucket.count() == 0 and len(server.requests) == 0
    assert not (tmp_path / "dest").exists()


def test_instances_no_backend_serves_fail_before_any_download(
        server: ArchiveServer, bucket: IDCBucketServer, history: Path, locked: Path,
        tmp_path: Path) -> None:
    data = json.loads(locked.read_text())
    series = data["series"][0]
    series["instances"].append({"SOPInstanceUID": "1.2.3.4.5", "md5": "0" * 32})
    series["instance_count"] += 1
    bad = tmp_path / "more.lock"
    bad.write_text(json.dumps(data))
    with _client(server, bucket, history, tmp_path / "reviewer", backend="auto") as c:
        with pytest.raises(LockfileError, match=series["SeriesInstanceUID"]):
            c.download(bad, tmp_path / "dest", progress=False)
    assert bucket.count("GetObject") == 0
    assert not any(r.endpoint.startswith("getImage") for r in server.requests)


def test_a_selection_with_failures_writes_no_lock(
        server: ArchiveServer, bucket: IDCBucketServer, history: Path, tmp_path: Path) -> None:
    uids = _cohort(server)[:2]
    bucket.faults.add("status", endpoint="GetObject", series=uids[1], code=403, times=100)
    path = tmp_path / "cohort.lock"
    with _client(server, bucket, history, tmp_path / "c") as c:
        with pytest.raises(DownloadError, match=f"(?s)no lockfile written: 1 of 2 .*{uids[1]}"):
            c.lock(uids, path)
        with pytest.raises(TCIAError, match="1.2.3.4"):
            c.lock(["1.2.3.4"], path)
        with pytest.raises(ValueError, match="not a DICOM UID"):
            c.lock(["x"], path)
    assert not path.exists()


def test_the_command_line(server: ArchiveServer, bucket: IDCBucketServer, history: Path,
                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = ["--api-url", server.api_url, "--nlst-api-url", server.nlst_api_url,
               "--idc-url", bucket.url, "--idc-index", str(history), "--backend", "idc"]
    lock = tmp_path / "cohort.lock"
    assert main(["lock", "--collection", "Pydicom-CT-Series", "-o", str(lock),
                 "--cache-dir", str(tmp_path / "a"), *options]) == 0
    table = server.archive.table
    assert set(read_lockfile(lock).series_uids) == set(
        table[table["Collection"] == "Pydicom-CT-Series"]["SeriesInstanceUID"])
    dest = tmp_path / "dest"
    assert main(["download", str(lock), "-o", str(dest), "-q",
                 "--cache-dir", str(tmp_path / "b"), *options]) == 0
    assert "every instance as locked" in capsys.readouterr().out
    assert main(["verify", "--lock", str(lock), str(dest)]) == 0
    assert "locked instances verified" in capsys.readouterr().out
    victim = next(dest.rglob("*.dcm"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert main(["verify", "--lock", str(lock), str(dest)]) == 1
    assert "changed: series" in capsys.readouterr().err
    victim.unlink()
    assert main(["verify", "--lock", str(lock), str(dest)]) == 1
    assert "missing: series" in capsys.readouterr().err
    bad = tmp_path / "bad.lock"
    bad.write_text('{"format_version": 1,\n "series": [}')
    assert main(["download", str(bad), "-o", str(dest), *options]) == 1
    assert "line 2" in capsys.readouterr().err

"""Series files from the Imaging Data Commons (the sample archive's loopback S3 bucket and index):
the NBIA contract on ``backend="idc"`` (same files, datasets, catalog, ``tcia://``, volumes, CLI),
``backend="auto"`` choosing each source and falling back from each to the other, and S3 faults
retried or refused."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import intake
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydicom
import pytest

from intake_tcia.cli import main
from intake_tcia.client import TCIAClient
from intake_tcia.errors import (
    IDCFallbackWarning,
    TCIAHTTPError,
    TCIAIntegrityError,
    TCIANotFoundError,
)
from intake_tcia.fs import TCIAFileSystem
from intake_tcia.sources import TCIASeriesSource
from intake_tcia.testing import ArchiveServer, IDCBucketServer
from intake_tcia.testing.idc import crdc_series_uuid

CATALOGS = Path(__file__).resolve().parent.parent / "catalogs"


def _client(server: ArchiveServer, bucket: IDCBucketServer, index: Path, cache: Path,
            backend: str = "idc", **options: object) -> TCIAClient:
    options = {"retries": 3, "backoff_factor": 0.01, **options}
    return TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url, cache_dir=cache,
                      backend=backend, idc_url=bucket.url, idc_index=index, **options)


def _with_files(server: ArchiveServer) -> list[str]:
    return [u for u in server.archive.series_uids() if server.archive.instances(u)]


@pytest.fixture
def ct_uid(server: ArchiveServer) -> str:
    """The series with the most instances (10 CT slices)."""
    return max(_with_files(server), key=lambda u: len(server.archive.instances(u)))


def _md5s(paths: list[Path]) -> dict[str, str]:
    """SOPInstanceUID -> MD5 of DICOM files."""
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID):
            hashlib.md5(p.read_bytes()).hexdigest() for p in paths}


def _edit_index(folder: Path, uid: str, *, drop: bool = False, add: int = 0) -> None:
    """Drop a series from the index folder, or add to its instanceCount."""
    path = folder / "idc_index.parquet"
    table = pq.read_table(path)
    hit = pc.equal(table["SeriesInstanceUID"], uid)
    if drop:
        table = table.filter(pc.invert(hit))
    else:
        counts = table["instanceCount"]
        column = table.schema.get_field_index("instanceCount")
        changed = pc.if_else(hit, pc.add(counts, pa.scalar(add, counts.type)), counts)
        table = table.set_column(column, table.schema.field(column), changed)
    pq.write_table(table, path)


# -- the NBIA contract on backend="idc" -----------------------------------------------------------


def test_download_gives_the_same_files_from_either_backend(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_path: Path
) -> None:
    uids = _with_files(server)
    nbia = _client(server, bucket, idc_index, tmp_path / "c1", backend="nbia")
    from_nbia = nbia.download(uids, tmp_path / "nbia", progress=False).set_index(
        "SeriesInstanceUID")
    assert bucket.count() == 0
    server.clear_log()
    idc = _client(server, bucket, idc_index, tmp_path / "c2")
    from_idc = idc.download(uids, tmp_path / "idc", progress=False).set_index(
        "SeriesInstanceUID")
    assert server.count("getImage") == server.count("getSeriesSize") == 0
    assert bucket.count("ListObjectsV2") == len(uids)
    assert bucket.count("GetObject") == sum(len(server.archive.instances(u)) for u in uids)
    assert (from_idc["status"] == "downloaded").all()
    assert from_idc["files"].equals(from_nbia["files"])
    assert from_idc["bytes"].equals(from_nbia["bytes"])
    for uid in uids:
        nbia_folder, idc_folder = Path(from_nbia.loc[uid, "path"]), Path(from_idc.loc[uid, "path"])
        assert nbia_folder.relative_to(tmp_path / "nbia") == idc_folder.relative_to(
            tmp_path / "idc")  # the same layout folder
        truth = {sop: hashlib.md5(p.read_bytes()).hexdigest()
                 for sop, p in server.archive.instances(uid)}
        assert _md5s(sorted(idc_folder.glob("*.dcm"))) == truth
        assert _md5s(sorted(nbia_folder.glob("*.dcm"))) == truth
    again = idc.download(uids, tmp_path / "idc", progress=False)
    assert (again["status"] == "cached").all()


def test_read_series_volume_and_catalog_are_the_same_on_idc(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_path: Path, ct_uid: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nbia = _client(server, bucket, idc_index, tmp_path / "c1", backend="nbia").read_series(ct_uid)
    idc = _client(server, bucket, idc_index, tmp_path / "c2").read_series(ct_uid)
    assert [d.SOPInstanceUID for d in idc] == [d.SOPInstanceUID for d in nbia]
    assert all(np.array_equal(a.pixel_array, b.pixel_array) for a, b in zip(idc, nbia,
                                                                          strict=True))
    monkeypatch.setenv("INTAKE_TCIA_API_URL", server.api_url)
    monkeypatch.setenv("INTAKE_TCIA_NLST_API_URL", server.nlst_api_url)
    monkeypatch.setenv("INTAKE_TCIA_BACKEND", "idc")
    monkeypatch.setenv("INTAKE_TCIA_IDC_URL", bucket.url)
    monkeypatch.setenv("INTAKE_TCIA_IDC_INDEX", str(idc_index))
    monkeypatch.setenv("INTAKE_TCIA_CACHE_DIR", str(tmp_path / "c3"))
    server.clear_log()
    row = server.archive.series.set_index("SeriesInstanceUID").loc[ct_uid]
    cat = intake.open_catalog(str(CATALOGS / "tcia.yaml"))
    source = cat.tcia[row["Collection"]][row["PatientID"]][row["StudyInstanceUID"]][ct_uid]
    volume = source.volume()
    assert server.requests == []  # catalog, listing and files: index and bucket only
    from intake_tcia.volume import volume_from_datasets

    expected = volume_from_datasets(nbia)
    assert volume.shape == expected.shape and np.array_equal(volume.array, expected.array)
    assert [d.SOPInstanceUID for d in source.read()] == [d.SOPInstanceUID for d in nbia]


def test_a_series_cached_from_one_backend_is_served_to_the_other(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path
) -> None:
    first, second = _with_files(server)[:2]
    _client(server, bucket, idc_index, tmp_cache, backend="nbia").fetch_series(first)
    server.clear_log()
    assert len(_client(server, bucket, idc_index, tmp_cache).read_series(first)) == len(
        server.archive.instances(first))
    assert bucket.count() == 0
    _client(server, bucket, idc_index, tmp_cache).fetch_series(second)
    bucket.clear_log()
    datasets = _client(server, bucket, idc_index, tmp_cache, backend="nbia").read_series(second)
    assert len(datasets) == len(server.archive.instances(second))
    assert server.requests == [] and bucket.count() == 0


def test_sop_instance_uids_and_dicom_tags_from_ranged_header_reads(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_path: Path, ct_uid: str
) -> None:
    nbia = _client(server, bucket, idc_index, tmp_path / "c1", backend="nbia")
    idc = _client(server, bucket, idc_index, tmp_path / "c2")
    bucket.max_keys = 3  # the listing takes pages
    uids = idc.sop_instance_uids(ct_uid)
    assert sorted(uids) == sorted(nbia.sop_instance_uids(ct_uid))
    gets = [r for r in bucket.requests if r.endpoint == "GetObject"]
    assert len(gets) == len(uids) and all(r.params.get("range") for r in gets)
    assert sum(r.bytes_sent for r in gets) < sum(
        p.stat().st_size for _, p in server.archive.instances(ct_uid))
    assert bucket.count("ListObjectsV2") == 4  # 10 objects, 3 a page
    bucket.clear_log()
    assert _client(server, bucket, idc_index, tmp_path / "c2").sop_instance_uids(ct_uid) == uids
    assert bucket.count() == 0  # kept in the cache directory, for any later client
    tags, expected = idc.dicom_tags(ct_uid), nbia.dicom_tags(ct_uid)  # one instance's header
    pd.testing.assert_frame_equal(tags[["element", "name"]], expected[["element", "name"]])
    same = ["(0020,000E)", "(0020,000D)", "(0008,0060)", "(0028,0010)", "(0028,0011)"]
    assert (tags.set_index("element").loc[same, "data"].tolist()
            == expected.set_index("element").loc[same, "data"].tolist())
    sop = tags.set_index("element").loc["(0008,0018)", "data"]
    assert sop in uids


def test_tcia_fs_on_idc_lists_and_opens_as_on_nbia(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_path: Path, ct_uid: str
) -> None:
    row = server.archive.series.set_index("SeriesInstanceUID").loc[ct_uid]
    folder = f"{row['Collection']}/{row['PatientID']}/{row['StudyInstanceUID']}/{ct_uid}"
    options = {"api_url": server.api_url, "nlst_api_url": server.nlst_api_url,
               "idc_url": bucket.url, "idc_index": str(idc_index), "fetch": "instance"}
    nbia = TCIAFileSystem(cache_dir=str(tmp_path / "c1"), backend="nbia", **options)
    idc = TCIAFileSystem(cache_dir=str(tmp_path / "c2"), backend="idc", **options)
    server.clear_log()
    names = idc.ls(folder, detail=False)
    assert sorted(names) == sorted(nbia.ls(folder, detail=False))
    assert idc.ls(row["Collection"], detail=False) == nbia.ls(row["Collection"], detail=False)
    assert server.count() == 2  # NBIA's listings only
    bucket.clear_log()
    for name in names[:2]:
        assert idc.cat_file(name) == nbia.cat_file(name)
    assert [r.endpoint for r in bucket.requests] == ["GetObject", "GetObject"]
    assert all("range" not in r.params for r in bucket.requests)
    assert idc.info(names[0])["size"] == len(nbia.cat_file(names[0]))
    with pytest.raises(FileNotFoundError):
        idc.cat_file(f"{folder}/1.2.3.4.dcm")


def test_discover_reads_one_header_and_nothing_else(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_path: Path, ct_uid: str
) -> None:
    options = {"api_url": server.api_url, "nlst_api_url": server.nlst_api_url,
               "idc_url": bucket.url, "idc_index": str(idc_index)}
    nbia = TCIASeriesSource(ct_uid, cache_dir=str(tmp_path / "c1"), backend="nbia", **options)
    idc = TCIASeriesSource(ct_uid, cache_dir=str(tmp_path / "c2"), backend="idc", **options)
    expected = nbia.discover()
    server.clear_log()
    found = idc.discover()
    assert (found["shape"], found["dtype"], found["npartitions"]) == (
        expected["shape"], expected["dtype"], expected["npartitions"])
    assert server.requests == []
    listing, read = bucket.requests
    assert listing.endpoint == "ListObjectsV2" and listing.params["max-keys"] == "1"
    assert read.endpoint == "GetObject" and read.params["range"].startswith("bytes=0-")


def test_the_cli_downloads_from_idc(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_path: Path, ct_uid: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["download", ct_uid, "-o", str(tmp_path / "dest"), "-q", "--backend", "idc",
                 "--idc-url", bucket.url, "--idc-index", str(idc_index), "--api-url",
                 server.api_url, "--nlst-api-url", server.nlst_api_url, "--cache-dir",
                 str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    assert server.count("getImage") == 0 and bucket.count("GetObject") == 10
    assert len(list((tmp_path / "dest").rglob("*.dcm"))) == 10


# -- backend="auto" -------------------------------------------------------------------------------


def test_auto_takes_files_from_idc_when_the_index_has_nbias_count(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path, ct_uid: str
) -> None:
    series = _client(server, bucket, idc_index, tmp_cache, backend="auto").fetch_series(ct_uid)
    assert len(series.instances) == 10
    assert server.count("getImage") == 0 and server.count("getSeriesSize") == 1
    assert bucket.count("GetObject") == 10


def test_auto_takes_files_from_nbia_when_the_index_lacks_the_series_or_its_count(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_path: Path, ct_uid: str
) -> None:
    others = [u for u in _with_files(server) if u != ct_uid]
    _edit_index(idc_index, ct_uid, drop=True)
    _edit_index(idc_index, others[0], add=1)
    client = _client(server, bucket, idc_index, tmp_path / "c", backend="auto")
    client.fetch_series(ct_uid)
    client.fetch_series(others[0])
    assert server.count("getImage") == 2 and bucket.count("GetObject") == 0


def test_auto_falls_back_from_idc_to_nbia(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path, ct_uid: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bucket.faults.add("status", code=500, series=ct_uid, times=100)
    with caplog.at_level(logging.WARNING, logger="intake_tcia"):
        series = _client(server, bucket, idc_index, tmp_cache, backend="auto").fetch_series(
            ct_uid)
    assert len(series.instances) == 10 and server.count("getImage") == 1
    assert bucket.count() == 4  # 1 + retries, then NBIA
    assert "idc failed" in caplog.text and "trying nbia" in caplog.text


def test_auto_falls_back_from_nbia_to_idc(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path, ct_uid: str
) -> None:
    client = _client(server, bucket, idc_index, tmp_cache, backend="auto")
    listing = client.series(series_uid=ct_uid)
    listing["ImageCount"] += 1  # NBIA counts another number: its getImage is asked first
    server.faults.add("status", code=503, endpoint="getImage", times=100)
    table = client.download(listing, tmp_cache.parent / "dest", progress=False)
    assert table.loc[0, "status"] == "downloaded" and table.loc[0, "files"] == 10
    assert server.count("getImage") == 4 and bucket.count("GetObject") == 10


def test_auto_uses_idc_when_nbia_cannot_be_reached(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path, ct_uid: str
) -> None:
    client = TCIAClient(api_url="http://127.0.0.1:9/nbia-api/services/v4/",
                        nlst_api_url="http://127.0.0.1:9/nlst/", cache_dir=tmp_cache,
                        backend="auto", idc_url=bucket.url, idc_index=idc_index, retries=0)
    with pytest.warns(IDCFallbackWarning, match="getSeriesSize answered from the IDC index"):
        assert len(client.fetch_series(ct_uid).instances) == 10
    assert bucket.count("GetObject") == 10


def test_idc_only_never_asks_nbia_and_names_an_unlisted_series(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path, ct_uid: str
) -> None:
    _edit_index(idc_index, ct_uid, drop=True)
    with pytest.raises(TCIANotFoundError, match="does not list series"):
        _client(server, bucket, idc_index, tmp_cache).fetch_series(ct_uid)
    assert server.requests == [] and bucket.count() == 0


# -- S3 faults ------------------------------------------------------------------------------------


def _fetch(server: ArchiveServer, bucket: IDCBucketServer, index: Path, cache: Path, uid: str,
           **options: object) -> int:
    return len(_client(server, bucket, index, cache, **options).fetch_series(uid).instances)


def test_slow_down_is_retried_after_retry_after(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path, ct_uid: str
) -> None:
    bucket.faults.add("status", code=503, retry_after=1, endpoint="GetObject", series=ct_uid)
    started = time.perf_counter()
    assert _fetch(server, bucket, idc_index, tmp_cache, ct_uid) == 10
    assert time.perf_counter() - started >= 1
    assert [r.status for r in bucket.requests].count(503) == 1


@pytest.mark.parametrize(("kind", "endpoint"), [
    ("reset", "GetObject"), ("truncate", "GetObject"), ("alter", "GetObject"),
    ("reset", "ListObjectsV2"), ("hang", "GetObject"),
])
def test_broken_objects_and_listings_are_retried(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path, ct_uid: str,
    kind: str, endpoint: str,
) -> None:
    if kind == "hang":
        bucket.faults.add(kind, endpoint=endpoint, series=ct_uid, seconds=3)
        assert _fetch(server, bucket, idc_index, tmp_cache, ct_uid, timeout=1) == 10
        return
    bucket.faults.add(kind, endpoint=endpoint, series=ct_uid, times=2)
    assert _fetch(server, bucket, idc_index, tmp_cache, ct_uid) == 10
    series = TCIAClient(cache_dir=tmp_cache).cache.get(ct_uid)
    truth = {sop: hashlib.md5(p.read_bytes()).hexdigest()
             for sop, p in server.archive.instances(ct_uid)}
    assert {i.sop_instance_uid: i.md5 for i in series.instances} == truth


def test_an_object_that_stays_altered_is_refused_and_nothing_is_cached(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path, ct_uid: str
) -> None:
    bucket.faults.add("alter", series=ct_uid, times=1000)
    key = f"{crdc_series_uuid(ct_uid)}/"
    with pytest.raises(TCIAIntegrityError, match=f"series {ct_uid}, object {key}.*: MD5"):
        _fetch(server, bucket, idc_index, tmp_cache, ct_uid)
    assert not (tmp_cache / "series" / ct_uid).exists()
    assert not any((tmp_cache / "staging").iterdir())
    assert bucket.count("GetObject") <= 4 * 10  # 1 + retries attempts at most


def test_no_retries_left_fails_at_the_first_fault(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path, ct_uid: str
) -> None:
    bucket.faults.add("status", code=503, endpoint="ListObjectsV2")
    with pytest.raises(TCIAHTTPError, match="503"):
        _fetch(server, bucket, idc_index, tmp_cache, ct_uid, retries=0)
    assert bucket.count() == 1


def test_a_bucket_holding_another_count_than_the_index_is_refused(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path, ct_uid: str
) -> None:
    _edit_index(idc_index, ct_uid, add=1)
    with pytest.raises(TCIAIntegrityError, match="the IDC index says 11"):
        _fetch(server, bucket, idc_index, tmp_cache, ct_uid)
    assert bucket.count("GetObject") == 0


def test_paged_listing_and_single_instances_with_faults(
    server: ArchiveServer, bucket: IDCBucketServer, idc_index: Path, tmp_cache: Path, ct_uid: str
) -> None:
    bucket.max_keys = 4
    client = _client(server, bucket, idc_index, tmp_cache)
    sop, path = server.archive.instances(ct_uid)[3]
    bucket.faults.add("status", code=500, endpoint="ListObjectsV2", times=1)
    assert sop in client.sop_instance_uids(ct_uid)
    assert bucket.count("ListObjectsV2") == 4  # one 500, then three pages of 4, 4, 2
    bucket.clear_log()
    bucket.faults.add("alter", endpoint="GetObject", times=1)
    assert client.single_image(ct_uid, sop) == path.read_bytes()
    assert [r.endpoint for r in bucket.requests] == ["GetObject", "GetObject"]
    with pytest.raises(TCIANotFoundError):
        client.single_image(ct_uid, "1.2.3.4")


def test_a_listing_names_only_objects_under_the_series_prefix() -> None:
    from intake_tcia.idc.listing import _Page
    from intake_tcia.idc.location import IDCLocation

    where = IDCLocation("1.2.3", "idc-open-data", "abc/", 2)
    contents = "".join(
        f"<Contents><Key>{key}</Key><Size>10</Size><ETag>{etag}</ETag></Contents>"
        for key, etag in [("abc/1.dcm", '"0123456789abcdef0123456789abcdef"'),
                          ("abc/2.dcm", '"0123456789abcdef0123456789abcdef-3"'),
                          ("other/3.dcm", '"00"'), ("abc/../../x.dcm", '"00"')])
    page = _Page(where, lambda: None)
    page.feed(f'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{contents}'
              "</ListBucketResult>".encode(), last=True)
    assert [(o.key, o.md5) for o in page.objects] == [
        ("abc/1.dcm", "0123456789abcdef0123456789abcdef"),
        ("abc/2.dcm", None)]  # a multipart ETag: no MD5

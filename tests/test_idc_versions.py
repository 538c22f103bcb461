"""Series as an older IDC release had them (``idc_version``): the sample archive's index with its
history lists older copies of two series (``prior_versions_index``) whose objects differ from
today's; the bucket's request log shows which objects a client GETs."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from intake_tcia.client import TCIAClient
from intake_tcia.config import Settings
from intake_tcia.errors import TCIABackendError, TCIANotFoundError
from intake_tcia.idc.versions import index_version, series_locations
from intake_tcia.testing import ArchiveServer, IDCBucketServer, write_idc_index
from intake_tcia.testing.idc_releases import (
    PRIOR_COMMENT,
    prior_crdc_series_uuid,
    prior_object_key,
    prior_series,
    removed_series,
    write_history,
)


@pytest.fixture
def history(server: ArchiveServer, tmp_path: Path) -> Path:
    return write_history(write_idc_index(tmp_path / "index", server.archive), server.archive)


def _client(server: ArchiveServer, bucket: IDCBucketServer, index: Path, cache: Path,
            **options: object) -> TCIAClient:
    options = {"backend": "idc", **options}
    return TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url, cache_dir=cache,
                      idc_url=bucket.url, idc_index=index, retries=2, backoff_factor=0.01,
                      **options)


def _comments(paths: list[Path]) -> set[str | None]:
    return {pydicom.dcmread(p, stop_before_pixels=True).get("ImageComments") for p in paths}


def test_version_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().idc_version is None
    assert Settings(idc_version="v21").idc_version == 21
    monkeypatch.setenv("INTAKE_TCIA_IDC_VERSION", "19")
    assert Settings.from_env().idc_version == 19
    for bad in ("latest", 0, -3, True):
        with pytest.raises(ValueError, match="idc_version must be an IDC release number"):
            Settings(idc_version=bad)


def test_index_version(history: Path, tmp_cache: Path) -> None:
    with TCIAClient(cache_dir=tmp_cache, backend="idc", idc_index=history) as c:
        assert index_version(c.idc_index) == 3  # the sample archive's three release dates


def test_an_older_release_fetches_its_own_objects(server: ArchiveServer, bucket: IDCBucketServer,
                                                  history: Path, tmp_cache: Path) -> None:
    uid = prior_series(server.archive)[0]
    sops = [sop for sop, _ in server.archive.instances(uid)]
    with _client(server, bucket, history, tmp_cache, idc_version=2) as old:
        series = old.fetch_series(uid)
        assert old.cache.get(uid) == series
    gets = {(r.params["bucket"], r.params["key"]) for r in bucket.requests
            if r.endpoint == "GetObject"}
    assert gets == {("idc-open-data-two", prior_object_key(uid, sop)) for sop in sops}
    assert _comments(series.files) == {PRIOR_COMMENT}
    assert sorted(i.sop_instance_uid for i in series.instances) == sorted(sops)
    assert prior_crdc_series_uuid(uid) in str(series.path)

    bucket.clear_log()
    with _client(server, bucket, history, tmp_cache) as now:  # the index's own release
        current = now.fetch_series(uid)
    assert {r.params["bucket"] for r in bucket.requests} == {"idc-open-data"}
    assert PRIOR_COMMENT not in _comments(current.files)
    assert current.path != series.path
    # each release keeps its own copy: asking again sends nothing, and serves each its own
    bucket.clear_log()
    with _client(server, bucket, history, tmp_cache, idc_version="2") as old:
        assert _comments(old.fetch_series(uid).files) == {PRIOR_COMMENT}
    with _client(server, bucket, history, tmp_cache) as now:
        assert PRIOR_COMMENT not in _comments(now.fetch_series(uid).files)
    assert bucket.count() == 0


def test_an_older_release_on_the_gcs_mirror(server: ArchiveServer, bucket: IDCBucketServer,
                                            history: Path, tmp_cache: Path) -> None:
    uid = prior_series(server.archive)[1]
    with _client(server, bucket, history, tmp_cache, idc_version=1, idc_mirror="gcs") as old:
        assert _comments(old.fetch_series(uid).files) == {PRIOR_COMMENT}
        frame = old.urls(uid)
    assert {r.params["bucket"] for r in bucket.requests} == {"idc-open-idc1"}
    assert frame["s3_url"].str.startswith(f"s3://idc-open-idc1/{prior_crdc_series_uuid(uid)}/").all()


def test_series_a_release_lacks(server: ArchiveServer, bucket: IDCBucketServer, history: Path,
                                tmp_cache: Path) -> None:
    table = server.archive.table
    later = table[table["Collection"] == "Pydicom-CT-Series"]["SeriesInstanceUID"].tolist()
    with _client(server, bucket, history, tmp_cache, idc_version=1) as old:
        assert set(old.series()["SeriesInstanceUID"]).isdisjoint(later)
        assert len(old.series()) == (table["DateReleased"] == "03-15-2019").sum()
        with pytest.raises(TCIANotFoundError, match="IDC release 1 does not hold"):
            old.fetch_series(later[0])
        with pytest.raises(TCIANotFoundError, match=f"IDC release 1 .*{later[0]}"):
            old.series(series_uid=later[0])
        with pytest.raises(TCIANotFoundError, match="IDC release 1"):
            old.urls(later[0])
        assert series_locations(old.router.idc, later).empty
    assert bucket.count() == 0
    with _client(server, bucket, history, tmp_cache) as now:
        assert set(later) <= set(now.series()["SeriesInstanceUID"])


def test_a_release_newer_than_the_index(server: ArchiveServer, bucket: IDCBucketServer,
                                        history: Path, tmp_cache: Path) -> None:
    uid = prior_series(server.archive)[0]
    with _client(server, bucket, history, tmp_cache, idc_version=4) as c:
        with pytest.raises(TCIABackendError, match="idc_version 4 is newer .* IDC release 3"):
            c.fetch_series(uid)
        with pytest.raises(TCIABackendError, match="newer"):
            c.series()
    with _client(server, bucket, history, tmp_cache, idc_version=2, backend="nbia") as c:
        with pytest.raises(TCIABackendError, match="backend 'nbia'"):
            c.series()
    assert bucket.count() == 0


def test_the_real_prior_versions_index(tmp_cache: Path) -> None:
    """idc-index-data's own tables: a series revised since release 2 is located in its older
    bucket at release 2 (no request; reads the installed index)."""
    pq = pytest.importorskip("pyarrow.parquet")
    data = pytest.importorskip("idc_index_data")
    folder = Path(data.IDC_INDEX_PARQUET_FILEPATH).parent
    prior = pq.read_table(folder / "prior_versions_index.parquet",
                          columns=["SeriesInstanceUID", "crdc_series_uuid", "aws_bucket",
                                   "min_idc_version", "max_idc_version"]).slice(0, 1).to_pylist()[0]
    with TCIAClient(cache_dir=tmp_cache, backend="idc",
                    idc_version=prior["min_idc_version"]) as c:
        assert index_version(c.idc_index) >= prior["max_idc_version"]
        found = series_locations(c.router.idc, [prior["SeriesInstanceUID"]])
    assert found["crdc_series_uuid"].tolist() == [prior["crdc_series_uuid"]]
    assert found["aws_bucket"].tolist() == [prior["aws_bucket"]]
    assert found["prior"].tolist() == [True]


def test_instances_and_headers_of_an_older_release_come_from_its_copy(
        server: ArchiveServer, bucket: IDCBucketServer, history: Path, tmp_cache: Path) -> None:
    uid = prior_series(server.archive)[0]
    sops = sorted(sop for sop, _ in server.archive.instances(uid))
    with _client(server, bucket, history, tmp_cache, idc_version=2, backend="auto") as old:
        assert sorted(old.sop_instance_uids(uid)) == sops
        tags = old.dicom_tags(uid)
        data = old.single_image(uid, sops[0])
    assert PRIOR_COMMENT in set(tags["data"])
    assert pydicom.dcmread(io.BytesIO(data)).ImageComments == PRIOR_COMMENT
    assert {r.params["bucket"] for r in bucket.requests} == {"idc-open-data-two"}
    assert len(server.requests) == 0  # NBIA, which has only today's copy, is not asked


def test_a_series_removed_since_is_listed_and_served_by_the_releases_that_held_it(
        server: ArchiveServer, bucket: IDCBucketServer, history: Path, tmp_cache: Path) -> None:
    uid = removed_series(server.archive)
    row = server.archive.table.set_index("SeriesInstanceUID").loc[uid]
    with _client(server, bucket, history, tmp_cache) as now:
        assert uid not in set(now.series(collection=row["Collection"])["SeriesInstanceUID"])
        with pytest.raises(TCIANotFoundError, match="does not list series"):
            now.fetch_series(uid)
    with _client(server, bucket, history, tmp_cache, idc_version=2) as old:
        frame = old.series(collection=row["Collection"].lower(), modality="mr")
        listed = frame.set_index("SeriesInstanceUID").loc[uid]
        assert (listed["PatientID"], listed["StudyInstanceUID"]) == (
            row["PatientID"], row["StudyInstanceUID"])
        assert listed["Collection"] == row["Collection"] and listed["ImageCount"] is pd.NA
        assert frame.dtypes.to_dict() == now.series().dtypes.to_dict()
        assert old.series(series_uid=uid)["SeriesInstanceUID"].tolist() == [uid]
        assert old.series(collection=row["Collection"], modality="CT").query(
            "SeriesInstanceUID == @uid").empty
        series = old.fetch_series(uid)
    assert sorted(i.sop_instance_uid for i in series.instances) == sorted(
        sop for sop, _ in server.archive.instances(uid))

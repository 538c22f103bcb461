"""Tests of the sample archive's IDC bucket (a loopback moto S3 server under IDC's keys, with S3
faults), talked to with plain HTTP and with s5cmd, as IDC's clients do."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests

from intake_tcia.testing import ArchiveServer, FaultPlan, IDCBucketServer, S3FaultPlan
from intake_tcia.testing.idc import BUCKET, crdc_series_uuid, object_key

S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _ct_uid(server: ArchiveServer) -> str:
    series = server.archive.series
    return series.sort_values("ImageCount")["SeriesInstanceUID"].iloc[-1]


def _list(bucket: IDCBucketServer, prefix: str, **params: str) -> ET.Element:
    answer = requests.get(f"{bucket.url}{BUCKET}", params={"list-type": "2", "prefix": prefix,
                                                            **params}, timeout=10)
    assert answer.status_code == 200, answer.text
    return ET.fromstring(answer.content)


def test_every_instance_is_an_object_under_idc_keys_with_its_md5_as_etag(
    server: ArchiveServer, bucket: IDCBucketServer
) -> None:
    for uid in server.archive.series_uids():
        files = dict(server.archive.instances(uid))
        root = _list(bucket, f"{crdc_series_uuid(uid)}/")
        listed = {c.findtext(f"{S3}Key"): (int(c.findtext(f"{S3}Size")),
                                           c.findtext(f"{S3}ETag").strip('"'))
                  for c in root.iter(f"{S3}Contents")}
        expected = {object_key(uid, sop): (path.stat().st_size,
                                           hashlib.md5(path.read_bytes()).hexdigest())
                    for sop, path in files.items()}
        assert listed == expected, uid


def test_anonymous_get_and_ranged_get(server: ArchiveServer, bucket: IDCBucketServer) -> None:
    uid = _ct_uid(server)
    sop, path = server.archive.instances(uid)[0]
    url = f"{bucket.url}{BUCKET}/{object_key(uid, sop)}"
    whole = requests.get(url, timeout=10)
    assert whole.status_code == 200 and whole.content == path.read_bytes()
    part = requests.get(url, headers={"Range": "bytes=0-131"}, timeout=10)
    assert part.status_code == 206 and part.content == path.read_bytes()[:132]
    assert [r.endpoint for r in bucket.requests] == ["GetObject", "GetObject"]
    assert bucket.requests[1].params["range"] == "bytes=0-131"


def test_the_bucket_is_read_only(bucket: IDCBucketServer) -> None:
    answer = requests.put(f"{bucket.url}{BUCKET}/x.dcm", data=b"x", timeout=10)
    assert answer.status_code == 403 and b"AccessDenied" in answer.content
    missing = requests.get(f"{bucket.url}{BUCKET}/no/such.dcm", timeout=10)
    assert missing.status_code == 404 and b"NoSuchKey" in missing.content


def test_listing_pages_at_max_keys(server: ArchiveServer, bucket: IDCBucketServer) -> None:
    uid = _ct_uid(server)
    bucket.max_keys = 3
    prefix, keys, token = f"{crdc_series_uuid(uid)}/", [], None
    while True:
        root = _list(bucket, prefix, **({"continuation-token": token} if token else {}))
        page = [c.findtext(f"{S3}Key") for c in root.iter(f"{S3}Contents")]
        assert len(page) <= 3
        keys += page
        token = root.findtext(f"{S3}NextContinuationToken")
        if root.findtext(f"{S3}IsTruncated") != "true":
            break
    assert sorted(keys) == sorted(bucket.keys(uid)) and len(keys) > 3


def test_s3_faults(server: ArchiveServer, bucket: IDCBucketServer) -> None:
    uid = _ct_uid(server)
    sop, path = server.archive.instances(uid)[0]
    url, data = f"{bucket.url}{BUCKET}/{object_key(uid, sop)}", path.read_bytes()
    bucket.faults.add("status", code=503, retry_after=2, series=uid)
    slow = requests.get(url, timeout=10)
    assert slow.status_code == 503 and slow.headers["Retry-After"] == "2"
    assert b"<Code>SlowDown</Code>" in slow.content
    bucket.faults.add("alter", series=uid)
    altered = requests.get(url, timeout=10)
    assert len(altered.content) == len(data) and altered.content != data
    assert altered.headers["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    for kind in ("truncate", "reset"):
        bucket.faults.add(kind, after_bytes=100)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(url, timeout=10)
    assert requests.get(url, timeout=10).content == data  # one-shot faults are used up
    with pytest.raises(ValueError, match="unknown fault kind"):
        bucket.faults.add("bomb")
    assert isinstance(bucket.faults, S3FaultPlan) and isinstance(bucket.faults, FaultPlan)


def test_a_fault_for_one_series_spares_the_others(
    server: ArchiveServer, bucket: IDCBucketServer
) -> None:
    uids = server.archive.series_uids()[:2]
    bucket.faults.add("status", code=500, series=uids[0], times=5)
    other = requests.get(f"{bucket.url}{BUCKET}/{bucket.keys(uids[1])[0]}", timeout=10)
    assert other.status_code == 200
    hit = requests.get(f"{bucket.url}{BUCKET}/{bucket.keys(uids[0])[0]}", timeout=10)
    assert hit.status_code == 500 and b"InternalError" in hit.content


def test_bandwidth_cap_per_connection(server: ArchiveServer, bucket: IDCBucketServer) -> None:
    uid = _ct_uid(server)
    sop, path = server.archive.instances(uid)[0]
    bucket.faults.bandwidth = path.stat().st_size / 0.5  # half a second per object
    start = time.perf_counter()
    requests.get(f"{bucket.url}{BUCKET}/{object_key(uid, sop)}", timeout=10).raise_for_status()
    assert time.perf_counter() - start >= 0.4


@pytest.mark.skipif(shutil.which("s5cmd") is None, reason="s5cmd not installed")
def test_s5cmd_copies_a_series(server: ArchiveServer, bucket: IDCBucketServer,
                               tmp_path: Path) -> None:
    uid = _ct_uid(server)
    subprocess.run(["s5cmd", "--no-sign-request", "--endpoint-url", bucket.url.rstrip("/"),
                    "cp", f"s3://{BUCKET}/{crdc_series_uuid(uid)}/*", f"{tmp_path}/"],
                   check=True, capture_output=True, timeout=60)
    got = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert got == {object_key(uid, sop).rpartition("/")[2]: path.read_bytes()
                   for sop, path in server.archive.instances(uid)}


def test_the_command_line_prints_both_backends_settings() -> None:
    process = subprocess.Popen([sys.executable, "-m", "intake_tcia.testing", "--quiet"],
                               stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        exports = dict(line[len("export "):].strip().split("=", 1) for line in lines
                       if line.startswith("export "))
        assert {"INTAKE_TCIA_API_URL", "INTAKE_TCIA_IDC_URL", "INTAKE_TCIA_IDC_INDEX"} <= set(
            exports)
        assert (Path(exports["INTAKE_TCIA_IDC_INDEX"]) / "idc_index.parquet").is_file()
        root = ET.fromstring(requests.get(exports["INTAKE_TCIA_IDC_URL"] + BUCKET,
                                          params={"list-type": "2"}, timeout=10).content)
        assert root.findtext(f"{S3}KeyCount") not in (None, "0")
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()  # type: ignore[union-attr]

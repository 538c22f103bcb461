"""Hostile buckets and hostile index folders: every IDC answer is bounded, and nothing that is
not a complete, verified instance of the series is ever published.

Each test points a client at :class:`~intake_tcia.testing.hostile_bucket.HostileBucket` (a
loopback S3-like server of the project's own) holding one sample series, makes one thing
hostile, and checks the client refuses it with a TCIA error naming the series (and the object
or index column at fault), within a bound, with nothing in the cache.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydicom
import pytest

from intake_tcia.client import TCIAClient
from intake_tcia.errors import TCIAError, TCIAHTTPError, TCIAIntegrityError
from intake_tcia.testing import ArchiveServer, write_idc_index
from intake_tcia.testing.hostile_bucket import HostileBucket, HostileObject, dicom_stub, gzip_bomb
from intake_tcia.testing.idc import crdc_series_uuid

#: Seconds any refusal may take here (everything is on loopback and small).
BOUND = 10.0


@pytest.fixture(scope="module")
def hostile_bucket() -> Iterator[HostileBucket]:
    with HostileBucket() as bucket:
        yield bucket


@pytest.fixture
def setup(server: ArchiveServer, hostile_bucket: HostileBucket,
          tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The 10-slice CT series in the hostile bucket and in an index folder."""
    archive = server.archive
    uid = max((u for u in archive.series_uids() if archive.instances(u)),
              key=lambda u: len(archive.instances(u)))
    hostile_bucket.reset()
    keys = hostile_bucket.put_series(uid, archive.instances(uid))
    index = write_idc_index(tmp_path / "idc-index", archive)
    yield {"uid": uid, "keys": keys, "index": index, "bucket": hostile_bucket,
           "prefix": f"{crdc_series_uuid(uid)}/", "cache": tmp_path / "cache",
           "files": [p for _, p in archive.instances(uid)], "server": server, "tmp": tmp_path}
    hostile_bucket.reset()


def _client(s: dict[str, Any], **options: Any) -> TCIAClient:
    options = {"retries": 1, "backoff_factor": 0.01, "max_backoff": 0.02, "timeout": (2.0, 2.0),
               "query_timeout": 5.0, **options}
    return TCIAClient(api_url=s["server"].api_url, nlst_api_url=s["server"].nlst_api_url,
                      cache_dir=s["cache"], backend="idc", idc_url=s["bucket"].url,
                      idc_index=s["index"], **options)


def _bounded(call: Callable[[], Any], seconds: float = BOUND) -> BaseException:
    """The error ``call()`` raises, which it must do within ``seconds``."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    assert outcome and isinstance(outcome[0], BaseException), f"no error: {str(outcome)[:200]}"
    print(f"refused in {time.monotonic() - start:.2f} s: {outcome[0]!r}"[:400])
    return outcome[0]


def _refused(s: dict[str, Any], error: BaseException, *names: str,
             kind: type[TCIAError] = TCIAError) -> None:
    """``error`` is a ``kind`` naming the series and ``names``; the cache holds no series."""
    assert isinstance(error, kind), repr(error)
    for name in (s["uid"], *names):
        assert name in str(error), f"{name!r} not in {error}"
    published = s["cache"] / "series"
    assert not published.exists() or not any(published.iterdir())


def _edit_index(s: dict[str, Any], column: str, value: Any, kind: Any = None) -> Path:
    """Set ``column`` of the series' row (``kind``: the whole column's new Arrow type)."""
    path = s["index"] / "idc_index.parquet"
    table = pq.read_table(path)
    hit = pc.equal(table["SeriesInstanceUID"], s["uid"]).to_pylist()
    at = table.schema.get_field_index(column)
    old = table[column].to_pylist()
    kind = kind or table.schema.field(at).type
    same = kind == table.schema.field(at).type
    again = (lambda o: o) if same else str if pa.types.is_string(kind) or pa.types.is_large_string(
        kind) else float
    new = [value if h else (None if o is None else again(o))
           for h, o in zip(hit, old, strict=True)]
    table = table.set_column(at, pa.field(column, kind), pa.array(new, kind))
    pq.write_table(table, path)
    return path


def _read(s: dict[str, Any], **options: Any) -> Callable[[], Any]:
    return lambda: _client(s, **options).read_series(s["uid"])


# -- listings -------------------------------------------------------------------------------------


def test_a_listing_that_never_ends_is_cut_after_the_series_count(setup: dict[str, Any]) -> None:
    setup["bucket"].listing[setup["prefix"]] = ("endless", {"per_page": 1})
    error = _bounded(_read(setup))
    _refused(setup, error)
    assert setup["bucket"].count("ListObjectsV2") <= 10 + 2  # instanceCount + slack


def test_one_listing_page_of_millions_of_keys_is_parsed_as_it_streams(
    setup: dict[str, Any],
) -> None:
    setup["bucket"].listing[setup["prefix"]] = ("huge", {"keys": 3_000_000})
    error = _bounded(_read(setup, max_answer_bytes=64 << 20))
    _refused(setup, error)
    assert setup["bucket"].sent_bytes < 16 << 20  # stopped at the key bound, not at 64 MB


def test_a_listing_declaring_entities_is_refused(setup: dict[str, Any]) -> None:
    setup["bucket"].listing[setup["prefix"]] = ("entity", {})
    _refused(setup, _bounded(_read(setup)), "DOCTYPE")


def test_a_key_holding_a_line_break_is_refused(setup: dict[str, Any]) -> None:
    bucket = setup["bucket"]
    for bad in ("\n", "\r"):
        bucket.reset()
        keys = bucket.put_series(setup["uid"], [(s, p) for s, p in
                                                setup["server"].archive.instances(setup["uid"])])
        renamed = keys[0].replace(".dcm", f"{bad}x.dcm")
        bucket.objects[renamed] = bucket.objects.pop(keys[0])
        error = _bounded(_read(setup))
        _refused(setup, error)
        assert repr(bad)[1:-1] in str(error)  # shown escaped
        assert not [p for p in setup["tmp"].rglob("*") if "\n" in p.name or "\r" in p.name]


# -- objects --------------------------------------------------------------------------------------


def test_an_object_whose_body_never_ends_is_refused_before_it_is_fetched(
    setup: dict[str, Any],
) -> None:
    victim = setup["bucket"].objects[setup["keys"][0]]
    victim.size, victim.mode = 200 << 20, "endless"
    error = _bounded(_read(setup))
    _refused(setup, error, "series_size_MB")
    assert setup["bucket"].sent_bytes < 8 << 20


@pytest.mark.parametrize("call", ["dicom_tags", "sop_instance_uids"])
def test_header_reads_are_capped(setup: dict[str, Any], call: str) -> None:
    """dicom_tags: file meta, then an element declaring 4 GB before any Pixel Data, then zeros
    without end; sop_instance_uids: ``DICM``, then zeros without end."""
    victim = min(setup["keys"])  # the object a header read takes
    if call == "dicom_tags":
        huge = b"\x08\x00\x01\x00OB\x00\x00" + (0xFFFFFFF0).to_bytes(4, "little")
        body = dicom_stub(setup["files"][0].read_bytes()) + huge
    else:
        body = dicom_stub() + bytes(1 << 16)
    setup["bucket"].objects[victim] = HostileObject(body, size=100 << 20, mode="endless")
    error = _bounded(lambda: getattr(_client(setup), call)(setup["uid"]))
    _refused(setup, error, victim)
    assert setup["bucket"].sent_bytes < 40 << 20  # the 16 MiB default cap, and socket buffers


@pytest.mark.parametrize("cut", ["mid_pixels", "before_pixels"])
def test_an_object_truncated_at_its_source_is_not_published(
    setup: dict[str, Any], cut: str
) -> None:
    data = setup["files"][3].read_bytes()
    at = len(data) // 2 if cut == "mid_pixels" else data.rfind(b"\xe0\x7f\x10\x00")
    setup["bucket"].objects[setup["keys"][3]] = HostileObject(data[:at])  # size and ETag agree
    _refused(setup, _bounded(_read(setup)), setup["keys"][3], kind=TCIAIntegrityError)


def test_a_gzip_bomb_listed_at_its_inflated_size_is_stopped_by_its_ratio(
    setup: dict[str, Any],
) -> None:
    inflated = 256 << 20
    setup["bucket"].objects[setup["keys"][0]] = HostileObject(
        b"", size=inflated, mode="gzip", params={"packed": gzip_bomb(inflated)})
    _edit_index(setup, "series_size_MB", 300.0)  # the index agrees: only the ratio can tell
    start = time.monotonic()
    error = _bounded(_read(setup))
    assert time.monotonic() - start < 5
    _refused(setup, error, setup["keys"][0], "compress")


def test_a_large_non_dicom_object_is_refused_at_once(setup: dict[str, Any]) -> None:
    import os

    setup["bucket"].objects[setup["keys"][0]] = HostileObject(os.urandom(32 << 20))
    _edit_index(setup, "series_size_MB", 40.0)
    start = time.monotonic()
    error = _bounded(_read(setup))
    assert time.monotonic() - start < 3
    _refused(setup, error, setup["keys"][0], "not DICOM", kind=TCIAIntegrityError)


@pytest.mark.parametrize("stub", ["preamble", "meta_only"])
def test_a_dicom_stub_is_not_an_instance(setup: dict[str, Any], stub: str) -> None:
    whole = setup["files"][0].read_bytes()
    body = dicom_stub() if stub == "preamble" else dicom_stub(whole)
    setup["bucket"].objects[setup["keys"][0]] = HostileObject(body)
    _refused(setup, _bounded(_read(setup)), setup["keys"][0], kind=TCIAIntegrityError)


def test_one_instance_under_two_keys_is_refused(setup: dict[str, Any]) -> None:
    bucket = setup["bucket"]
    bucket.objects[setup["keys"][1]] = HostileObject(bucket.objects[setup["keys"][0]].body)
    _refused(setup, _bounded(_read(setup)), "twice", kind=TCIAIntegrityError)


def test_an_instance_of_another_study_is_refused(setup: dict[str, Any]) -> None:
    ds = pydicom.dcmread(setup["files"][2])
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.999"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    setup["bucket"].objects[setup["keys"][2]] = HostileObject(out.getvalue())
    _refused(setup, _bounded(_read(setup)), setup["keys"][2], "1.2.826.0.1.3680043.8.498.999",
             kind=TCIAIntegrityError)


def test_a_trickling_bucket_meets_the_series_deadline(setup: dict[str, Any]) -> None:
    """Bytes at 20 B/s, each within the read timeout: the series' deadline is read_timeout plus
    its listed bytes (390 kB) at min_transfer_rate (here 1 + 2 s), not series_timeout (6 h)."""
    setup["bucket"].objects[setup["keys"][0]].mode = "trickle"
    setup["bucket"].objects[setup["keys"][0]].params = {"rate": 20}
    start = time.monotonic()
    error = _bounded(_read(setup, timeout=(2.0, 1.0), min_transfer_rate=200_000))
    assert time.monotonic() - start < 6
    _refused(setup, error, setup["keys"][0], "deadline")


def test_slow_down_names_the_series_and_the_object(setup: dict[str, Any]) -> None:
    for key in setup["keys"]:
        setup["bucket"].objects[key].mode = "status"
    error = _bounded(_read(setup))
    _refused(setup, error, kind=TCIAHTTPError)
    assert any(key in str(error) for key in setup["keys"])
    assert error.status == 503  # type: ignore[attr-defined]


def test_slow_down_on_the_listing_names_the_series(setup: dict[str, Any]) -> None:
    setup["bucket"].listing[setup["prefix"]] = ("status", {"code": 503})
    _refused(setup, _bounded(_read(setup)), kind=TCIAHTTPError)


# -- what the index vouches for -------------------------------------------------------------------


@pytest.mark.parametrize("count", [None, 0])
def test_a_count_the_index_cannot_vouch_for_is_not_complete(
    setup: dict[str, Any], count: int | None
) -> None:
    del setup["bucket"].objects[setup["keys"][-1]]  # 9 of 10
    _edit_index(setup, "instanceCount", count)
    _refused(setup, _bounded(_read(setup)), "instanceCount", kind=TCIAIntegrityError)


def test_a_series_far_larger_than_its_index_size_is_refused(setup: dict[str, Any]) -> None:
    total = sum(len(o.body) for o in setup["bucket"].objects.values())
    _edit_index(setup, "series_size_MB", total / 2000 / 1e6)
    _refused(setup, _bounded(_read(setup)), "series_size_MB", kind=TCIAIntegrityError)
    assert setup["bucket"].count("GetObject") == 0


HOSTILE_VALUES = {
    "nan_size": ("series_size_MB", float("nan"), None),
    "inf_size": ("series_size_MB", float("inf"), None),
    "null_size": ("series_size_MB", None, None),
    "negative_size": ("series_size_MB", -5.0, None),
    "text_count": ("instanceCount", "ten", pa.large_string()),
    "text_size": ("series_size_MB", "big", pa.large_string()),
    "float_count": ("instanceCount", 10.5, pa.float64()),
}


@pytest.mark.parametrize("case", list(HOSTILE_VALUES))
def test_hostile_index_values_give_an_error_naming_file_and_column(
    setup: dict[str, Any], case: str
) -> None:
    column, value, kind = HOSTILE_VALUES[case]
    path = _edit_index(setup, column, value, kind)
    error = _bounded(_read(setup))
    _refused(setup, error, column, path.name)
    table = _client(setup).download([setup["uid"]], setup["tmp"] / "dest", progress=False,
                                    on_error="return")
    assert table["status"].tolist() == ["failed"]
    assert column in table["error"].iloc[0]


def test_a_broken_index_file_gives_an_error_naming_it(setup: dict[str, Any]) -> None:
    path = setup["index"] / "idc_index.parquet"
    path.write_bytes(b"PAR1" + bytes(200) + b"PAR1")
    error = _bounded(_read(setup))
    _refused(setup, error, path.name)
    table = _client(setup).download([setup["uid"]], setup["tmp"] / "dest", progress=False,
                                    on_error="return")
    assert table["status"].tolist() == ["failed"]


def test_a_series_the_index_does_not_list_is_said_so(setup: dict[str, Any]) -> None:
    uid = "1.2.826.0.1.3680043.8.498.12345"
    error = _bounded(lambda: _client(setup).read_series(uid))
    assert isinstance(error, TCIAError) and uid in str(error)
    assert not str(error).startswith("HTTP 404")
    assert "index" in str(error)

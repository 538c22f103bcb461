"""Tests of SeriesWriter: files from many threads at once, every check, and publish's promise
(absent, or complete and verified)."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from intake_tcia.errors import TCIAIntegrityError, UnsafeArchiveError
from intake_tcia.retrieval.cache import SeriesCache
from intake_tcia.retrieval.pipeline import SeriesWriter

SERIES = "1.2.826.0.1.3680043.8.498.1"


def _instance(n: int, series: str = SERIES) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{SERIES}.{n}"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _pieces(data: bytes) -> list[bytes]:
    return [data[i : i + 1000] for i in range(0, len(data), 1000)]


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def cache(tmp_path: Path) -> SeriesCache:
    return SeriesCache(tmp_path / "cache")


def _staging_is_empty(cache: SeriesCache) -> bool:
    return not any((cache.root / "staging").iterdir())


def test_files_added_from_many_threads_are_published_verified(cache: SeriesCache) -> None:
    files = {f"{n}.dcm": _instance(n) for n in range(24)}
    with (
        cache.lock(SERIES),
        SeriesWriter(
            cache, SERIES, expected_count=24, size_limit=10**8, metadata={"Collection": "X"}
        ) as writer,
    ):
        with ThreadPoolExecutor(8) as pool:
            md5s = list(
                pool.map(
                    lambda item: writer.add(item[0], _pieces(item[1]), expected_md5=_md5(item[1])),
                    files.items(),
                )
            )
        assert md5s == [_md5(b) for b in files.values()]
        assert cache.get(SERIES) is None  # nothing published yet
        series = writer.publish()
    assert cache.get(SERIES) == series and series.metadata == {"Collection": "X"}
    assert {i.name: (i.md5, i.sop_instance_uid) for i in series.instances} == {
        name: (_md5(body), f"{SERIES}.{name[:-4]}") for name, body in files.items()
    }
    assert all((series.path / name).read_bytes() == body for name, body in files.items())
    assert _staging_is_empty(cache)


def test_expected_md5s_may_come_last(cache: SeriesCache) -> None:
    body = _instance(1)
    with cache.lock(SERIES), SeriesWriter(cache, SERIES, expected_count=1, size_limit=10**7) as w:
        w.add("1.dcm", [body])
        with pytest.raises(TCIAIntegrityError, match="no MD5"):
            w.complete()
        w.expect_md5s({"1.dcm": _md5(body).upper()})
        assert len(w.publish().instances) == 1


@pytest.mark.parametrize(
    ("case", "error", "retryable", "match"),
    [
        ("wrong_md5", TCIAIntegrityError, True, "MD5 of 1.dcm"),
        ("not_dicom", TCIAIntegrityError, False, "is not DICOM"),
        ("other_series", TCIAIntegrityError, False, "is an instance of series 9.9"),
        ("duplicate", UnsafeArchiveError, False, "appears twice"),
        ("path", UnsafeArchiveError, False, "'..'"),
        ("reserved", UnsafeArchiveError, False, "reserved"),
        ("too_big", UnsafeArchiveError, False, "zip bomb"),
        ("one_too_many", UnsafeArchiveError, False, "promised 1 files"),
        ("too_few", TCIAIntegrityError, True, "1 files arrived, getSeriesSize promised 2"),
        ("missing", TCIAIntegrityError, True, "missing from the zip"),
    ],
)
def test_what_is_refused_leaves_nothing(
    cache: SeriesCache, case: str, error: type, retryable: bool, match: str
) -> None:
    body = _instance(1)
    count = 2 if case == "too_few" else 1
    limit = len(body) - 1 if case == "too_big" else 10**7
    with pytest.raises(error, match=match) as info:  # noqa: PT012 - the whole writing is tried
        with (
            cache.lock(SERIES),
            SeriesWriter(cache, SERIES, expected_count=count, size_limit=limit) as w,
        ):
            if case == "not_dicom":
                w.add("1.dcm", [b"<html>"], expected_md5=_md5(b"<html>"))
            elif case == "other_series":
                other = _instance(1, series="9.9")
                w.add("1.dcm", [other], expected_md5=_md5(other))
            else:
                wrong = case == "wrong_md5"
                w.add("1.dcm", _pieces(body), expected_md5=_md5(b"x" if wrong else body))
            if case == "duplicate":
                w.add("1.DCM", [body])
            elif case == "path":
                w.add("../1.dcm", [body])
            elif case == "reserved":
                w.add("md5hashes.csv", [b""])
            elif case == "one_too_many":
                w.add("2.dcm", [body])
            elif case == "missing":
                w.expect_md5s({"2.dcm": _md5(body)})
            w.publish()
    assert info.value.retryable is retryable
    assert cache.get(SERIES) is None and _staging_is_empty(cache)


def test_a_non_dicom_file_is_corrupt_data_until_its_md5_confirms_it(cache: SeriesCache) -> None:
    with cache.lock(SERIES), SeriesWriter(cache, SERIES, expected_count=1, size_limit=10**7) as w:
        w.add("1.dcm", [b"<html>"])  # MD5 not known yet: no verdict
        with pytest.raises(TCIAIntegrityError, match="MD5 of 1.dcm") as wrong:
            w.expect_md5s({"1.dcm": _md5(b"another")})
        assert wrong.value.retryable
        with pytest.raises(TCIAIntegrityError, match="is not DICOM") as confirmed:
            w.expect_md5s({"1.dcm": _md5(b"<html>")})
        assert not confirmed.value.retryable


def test_check_instance_agrees_with_pydicom_on_its_test_files() -> None:
    from pydicom.data.data_manager import DATA_ROOT

    from intake_tcia.retrieval.dicomhead import check_instance

    read, cut = 0, set()
    for path in sorted(Path(DATA_ROOT, "test_files").rglob("*.dcm")):  # shipped, no download
        data = Path(path).read_bytes()
        found = check_instance(data[:65536], len(data), lambda at, n, d=data: d[at : at + n])
        if found is None:
            continue
        if found.problem is not None:
            if "cut short" in found.problem:
                cut.add(path.name)
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - files pydicom itself refuses are not compared
            continue
        assert (found.sop, found.series, found.study) == tuple(
            str(ds.get(k, "")) for k in ("SOPInstanceUID", "SeriesInstanceUID",
                                         "StudyInstanceUID")), path
        read += 1
    assert read > 50  # most files are read by the fast path
    assert {"MR_truncated.dcm", "rtplan_truncated.dcm"} <= cut


@pytest.mark.parametrize(
    ("cut", "complete"),
    [(0, True), (100, True), (1000, False)],
    ids=["whole", "cut in the trailing padding", "cut in the pixel data"],
)
def test_bytes_after_whole_pixel_data_are_kept_and_a_cut_before_is_not(cut, complete) -> None:
    from intake_tcia.retrieval.dicomhead import check_instance

    whole = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # Pixel Data, then padding
    data = whole[: len(whole) - cut] if cut else whole + b"\x00 junk after the data"
    found = check_instance(data, len(data), lambda at, n: data[at : at + n])
    assert found is not None and found.sop
    assert (found.problem is None) is complete, found.problem

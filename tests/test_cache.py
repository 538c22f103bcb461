"""Tests of the on-disk series cache: atomic publication, verification on lookup, locks, staging."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import pytest
from filelock import Timeout
from pydicom.data import get_testdata_file

from intake_tcia.retrieval.cache import (
    LICENSE_NAME,
    RECORD_NAME,
    CachedInstance,
    CachedSeries,
    SeriesCache,
    read_series_folder,
)

UID = "1.2.826.0.1.3680043.8.498.1"
DATA = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()


def _stage(cache: SeriesCache, staging: Path, uid: str = UID, n: int = 2) -> CachedSeries:
    """Build a two-file series in a staging folder, as the downloader does."""
    folder = staging / "series"
    folder.mkdir()
    instances = []
    for i in range(n):
        name = f"1-{i + 1:02d}.dcm"
        body = DATA + bytes([i])
        (folder / name).write_bytes(body)
        md5 = hashlib.md5(body).hexdigest()
        instances.append(CachedInstance(name, f"{uid}.{i + 1}", len(body), md5))
    (folder / LICENSE_NAME).write_text("CC BY 4.0")
    return CachedSeries(uid, folder, tuple(instances), "CC BY 4.0", {"Collection": "X"})


def _publish(cache: SeriesCache, uid: str = UID) -> CachedSeries:
    with cache.lock(uid), cache.staging(uid) as staging:
        return cache.publish(_stage(cache, staging, uid))


def test_absent_then_published(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path)
    assert cache.get(UID) is None
    assert UID not in cache
    published = _publish(cache)
    assert published.path == tmp_path / "series" / UID
    found = cache.get(UID)
    assert found == published
    assert UID in cache
    assert found.license_text == "CC BY 4.0"
    assert found.metadata == {"Collection": "X"}
    assert [p.name for p in found.files] == ["1-01.dcm", "1-02.dcm"]
    assert found.bytes == 2 * len(DATA) + 2
    assert found.instance_path(f"{UID}.2") == found.path / "1-02.dcm"
    with pytest.raises(FileNotFoundError, match="no instance"):
        found.instance_path("1.2.3")
    # nothing left in staging; the record is in the published folder
    assert list((tmp_path / "staging").iterdir()) == []
    record = json.loads((found.path / RECORD_NAME).read_text())
    assert record["series_uid"] == UID and len(record["instances"]) == 2


def test_a_series_being_built_is_invisible(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path)
    with cache.lock(UID), cache.staging(UID) as staging:
        series = _stage(cache, staging)
        assert cache.get(UID) is None  # staged, not published
        assert read_series_folder(series.path) is None  # no record yet
    assert cache.get(UID) is None
    assert list((tmp_path / "staging").iterdir()) == []


def test_an_exception_while_staging_leaves_nothing(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path)
    with pytest.raises(RuntimeError), cache.lock(UID), cache.staging(UID) as staging:
        _stage(cache, staging)
        raise RuntimeError("interrupted")
    assert cache.get(UID) is None
    assert list((tmp_path / "staging").iterdir()) == []
    assert not (tmp_path / "series" / UID).exists()


@pytest.mark.parametrize("damage", ["delete_file", "resize_file", "delete_record", "bad_record"])
def test_a_damaged_series_is_absent_and_replaced(tmp_path: Path, damage: str) -> None:
    cache = SeriesCache(tmp_path)
    published = _publish(cache)
    if damage == "delete_file":
        published.files[0].unlink()
    elif damage == "resize_file":
        published.files[1].write_bytes(b"short")
    elif damage == "delete_record":
        (published.path / RECORD_NAME).unlink()
    else:
        (published.path / RECORD_NAME).write_text("{not json")
    assert cache.get(UID) is None
    again = _publish(cache)
    assert cache.get(UID) == again
    assert [p.read_bytes()[-1] for p in again.files] == [0, 1]


def test_remove(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path)
    _publish(cache)
    assert cache.remove(UID) is True
    assert cache.get(UID) is None and not (tmp_path / "series" / UID).exists()
    assert cache.remove(UID) is False


def test_malformed_uid_is_refused_before_touching_disk(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path)
    for bad in ("../../etc", "1.2.", ""):
        with pytest.raises(ValueError, match="not a DICOM UID"):
            cache.get(bad)
    assert "../x" not in cache
    assert list(tmp_path.iterdir()) == []


def _hold_lock(root: str, uid: str, ready: multiprocessing.Event, done: multiprocessing.Event):
    with SeriesCache(root).lock(uid):
        ready.set()
        done.wait(30)


def test_lock_is_shared_across_processes(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), UID, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(Timeout):
            cache.lock(UID, timeout=0.1).acquire()
        # a staging folder of the series being worked on is not stale
        stale_looking = tmp_path / "staging" / f"{UID}.99999.abcd"
        stale_looking.mkdir(parents=True)
        assert cache.clean_staging() == 0
        assert stale_looking.exists()
    finally:
        done.set()
        holder.join(30)
    with cache.lock(UID, timeout=5):
        pass
    assert cache.clean_staging() == 1
    assert not stale_looking.exists()


def test_staging_clears_leftovers_of_its_own_series_only(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    dead = staging / f"{UID}.12345.dead"  # a process killed mid-download
    longer = staging / f"{UID}.7.12345.live"  # another series whose UID extends ours
    for folder in (dead, longer):
        (folder / "series").mkdir(parents=True)
    with cache.lock(UID), cache.staging(UID) as mine:
        assert not dead.exists()
        assert longer.exists()
        assert mine.parent == staging and mine.exists()


def test_published_folder_survives_a_new_cache_object(tmp_path: Path) -> None:
    _publish(SeriesCache(tmp_path))
    other = SeriesCache(os.fspath(tmp_path))
    assert other.get(UID) is not None
    assert repr(other) == f"SeriesCache({str(tmp_path)!r})"

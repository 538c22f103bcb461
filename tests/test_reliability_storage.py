"""Hostile file systems under the cache and the download folder (issue #13): a read-only cache, a
cache on another file system than the destination or than its own staging folder, and a full
disk. Each is a real mount (tmpfs, read-only bind mounts), so these tests need ``mount`` (root);
they are skipped where mounting is not allowed."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from intake_tcia.client import TCIAClient
from intake_tcia.errors import TCIAStorageError
from intake_tcia.fs import TCIAFileSystem
from intake_tcia.testing import ArchiveServer

CT_COLLECTION = "Pydicom-CT-Series"


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode:
        raise OSError(done.stderr.strip() or f"mount {' '.join(args)} failed")


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount at the end (last mounted first)."""
    points: list[Path] = []
    yield points
    for point in reversed(points):
        _unmount(point)


def tmpfs(mounts: list[Path], point: Path, size: str = "64m") -> Path:
    """A fresh tmpfs of ``size`` at ``point`` (skips the test where mounting is not allowed)."""
    point.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point))
    except OSError as exc:
        pytest.skip(f"needs mount (root): {exc}")
    mounts.append(point)
    return point


def read_only_view(mounts: list[Path], source: Path, point: Path) -> Path:
    """``source`` bind-mounted read-only at ``point``: root cannot write there either."""
    point.mkdir(parents=True, exist_ok=True)
    try:
        _mount("--bind", str(source), str(point))
        mounts.append(point)
        _mount("-o", "remount,bind,ro", str(point))
    except OSError as exc:
        pytest.skip(f"needs mount (root): {exc}")
    with pytest.raises(OSError) as refused:  # the view really is read-only
        (point / "probe").touch()
    assert refused.value.errno == errno.EROFS
    return point


def _client(server: ArchiveServer, cache: Path) -> TCIAClient:
    return TCIAClient(
        api_url=server.api_url,
        nlst_api_url=server.nlst_api_url,
        cache_dir=cache,
        retries=1,
        backoff_factor=0.01,
    )


@pytest.fixture
def ct_uid(server: ArchiveServer) -> str:
    """The largest series with pixel data: 10 CT slices, 393 kB."""
    series = server.archive.series
    return (
        series.loc[series["Collection"] == CT_COLLECTION]
        .sort_values("ImageCount")["SeriesInstanceUID"]
        .iloc[-1]
    )


def _md5s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.glob("*.dcm")}


def _archive_md5s(server: ArchiveServer, uid: str) -> set[str]:
    return {hashlib.md5(Path(p).read_bytes()).hexdigest() for _, p in server.archive.instances(uid)}


def _hidden_temporaries(*roots: Path) -> list[Path]:
    return [
        p
        for root in roots
        if root.exists()
        for p in root.rglob(".*")
        if p.name.endswith((".tmp", ".part"))
    ]


def test_a_read_only_cache_serves_download_and_read_series_of_a_cached_series(
    server: ArchiveServer, ct_uid: str, tmp_path: Path, mounts: list[Path]
) -> None:
    cache = tmp_path / "cache"
    with _client(server, cache) as writer:
        writer.download(ct_uid, tmp_path / "first", progress=False)
    (cache / "staging" / f"{ct_uid}.99999.dead").mkdir(parents=True)  # a killed run's leftover
    frozen = read_only_view(mounts, cache, tmp_path / "frozen")
    other = server.archive.series_uids(CT_COLLECTION)
    uncached = next(u for u in other if u != ct_uid)
    server.clear_log()
    with _client(server, frozen) as reader:
        table = reader.download(
            [ct_uid, uncached],
            tmp_path / "dest",
            on_error="return",
            layout="{SeriesInstanceUID}",
            progress=False,
        )
        datasets = reader.read_series(ct_uid)
    rows = table.set_index("SeriesInstanceUID")
    assert rows.loc[ct_uid, "status"] == "cached", rows.loc[ct_uid, "error"]
    placed = Path(rows.loc[ct_uid, "path"])
    assert set(_md5s(placed).values()) == _archive_md5s(server, ct_uid)
    assert len(datasets) == len(_md5s(placed))
    # the series it does not hold cannot be cached there: one clear error naming series and path
    assert rows.loc[uncached, "status"] == "failed"
    error = rows.loc[uncached, "error"]
    assert error.startswith("TCIAStorageError") and uncached in error
    assert "Read-only file system" in error and str(frozen) in error
    asked = [r.params.get("SeriesInstanceUID") for r in server.requests if r.endpoint == "getImage"]
    assert ct_uid not in asked and len(asked) <= 1  # the cached series cost no request
    assert _hidden_temporaries(tmp_path / "dest") == []


def test_a_single_instance_on_a_read_only_cache_is_a_storage_error(
    server: ArchiveServer, ct_uid: str, tmp_path: Path, mounts: list[Path]
) -> None:
    (tmp_path / "cache").mkdir()
    frozen = read_only_view(mounts, tmp_path / "cache", tmp_path / "frozen")
    fs = TCIAFileSystem(
        fetch="instance",
        skip_instance_cache=True,
        api_url=server.api_url,
        nlst_api_url=server.nlst_api_url,
        cache_dir=frozen,
        retries=0,
    )
    sop = server.archive.instances(ct_uid)[0][0]
    path = next(p for p in fs.find(f"tcia://{CT_COLLECTION}") if p.endswith(f"{sop}.dcm"))
    with pytest.raises(TCIAStorageError) as failed:  # listing needed no write; keeping one does
        fs.open(path).read()
    message = str(failed.value)
    assert ct_uid in message and str(frozen) in message and "Read-only file system" in message


def test_a_cache_on_another_file_system_than_dest(
    server: ArchiveServer, ct_uid: str, tmp_path: Path, mounts: list[Path]
) -> None:
    cache = tmpfs(mounts, tmp_path / "cache")
    dest = tmp_path / "dest"
    dest.mkdir()
    assert os.stat(cache).st_dev != os.stat(dest).st_dev
    with _client(server, cache) as client:
        table = client.download(ct_uid, dest, progress=False)
        placed = Path(table.loc[0, "path"])
        assert table.loc[0, "status"] == "downloaded"
        assert set(_md5s(placed).values()) == _archive_md5s(server, ct_uid)
        # the copies are the user's: editing one leaves the cache verified and unchanged
        victim = sorted(placed.glob("*.dcm"))[0]
        ds = pydicom.dcmread(victim)
        ds.PatientName = "Edited^AcrossDevices"
        ds.save_as(victim)
        assert client.cache.verify(ct_uid)
        again = client.download(ct_uid, tmp_path / "dest2", progress=False)
    assert again.loc[0, "status"] == "cached"
    assert set(_md5s(Path(again.loc[0, "path"])).values()) == _archive_md5s(server, ct_uid)


def test_a_cache_whose_series_folder_is_another_file_system_than_its_staging(
    server: ArchiveServer, ct_uid: str, tmp_path: Path, mounts: list[Path]
) -> None:
    cache = tmp_path / "cache"
    tmpfs(mounts, cache / "series")
    assert os.stat(cache / "series").st_dev != os.stat(cache).st_dev
    with _client(server, cache) as client:
        table = client.download(ct_uid, tmp_path / "dest", on_error="return", progress=False)
        assert table.loc[0, "status"] == "downloaded", table.loc[0, "error"]
        assert client.cache.get(ct_uid) is not None and client.cache.verify(ct_uid)
        assert set(_md5s(Path(table.loc[0, "path"])).values()) == _archive_md5s(server, ct_uid)
        # a damaged series is replaced, and one that fails verify removed, across the devices
        victim = client.cache.get(ct_uid).files[0]
        victim.write_bytes(victim.read_bytes()[:-1] + b"!")
        assert client.cache.get(ct_uid) is None
        refetched = client.fetch_series(ct_uid)
        assert {hashlib.md5(f.read_bytes()).hexdigest() for f in refetched.files} == (
            _archive_md5s(server, ct_uid)
        )
        stat = victim.stat()
        victim.write_bytes(victim.read_bytes()[:-1] + b"?")
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert not client.cache.verify(ct_uid) and client.cache.get(ct_uid) is None
        again = client.fetch_series(ct_uid)
    assert {hashlib.md5(f.read_bytes()).hexdigest() for f in again.files} == _archive_md5s(
        server, ct_uid
    )
    assert server.count("getImage") == 3
    assert _hidden_temporaries(cache, tmp_path / "dest") == []
    assert [p.name for p in (cache / "series").iterdir()] == [ct_uid]
    assert [p.name for p in (cache / "staging").iterdir()] == []


@pytest.mark.parametrize("full", ["dest", "cache"])
def test_a_full_disk_is_a_storage_error_naming_series_and_path(
    server: ArchiveServer, ct_uid: str, tmp_path: Path, mounts: list[Path], full: str
) -> None:
    small = tmpfs(mounts, tmp_path / "small", size="200k")  # the series is 393 kB
    cache = small / "cache" if full == "cache" else tmp_path / "cache"
    dest = small / "dest" if full == "dest" else tmp_path / "dest"
    with _client(server, cache) as client:
        table = client.download(ct_uid, dest, on_error="return", progress=False)
        assert table.loc[0, "status"] == "failed"
        error = table.loc[0, "error"]
        assert error.startswith("TCIAStorageError") and ct_uid in error
        assert "No space left on device" in error and str(small) in error
        # nothing half there: no hidden partial file, no staging left, the series not cached
        assert _hidden_temporaries(small, tmp_path / "cache") == []
        staging = cache / "staging"
        assert not staging.exists() or list(staging.iterdir()) == []
        if full == "cache":
            assert client.cache.get(ct_uid) is None
            with pytest.raises(TCIAStorageError) as raised:  # an OSError with the system's errno
                client.fetch_series(ct_uid)
            assert raised.value.errno == errno.ENOSPC and ct_uid in str(raised.value)
            assert _hidden_temporaries(small) == []

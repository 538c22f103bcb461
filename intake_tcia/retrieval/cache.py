"""The on-disk series cache: a series is either absent or complete and verified, never half there.

Layout under the cache root::

    series/<SeriesInstanceUID>/           a published series: its DICOM files, LICENSE and
        1-01.dcm ...                      .intake-tcia.json (the record: names, sizes, MD5s,
        LICENSE                           SOPInstanceUIDs, metadata known when it was fetched)
        .intake-tcia.json
    staging/<SeriesInstanceUID>.<pid>.<random>/   work in progress (one per download attempt)
    locks/<SeriesInstanceUID>.lock        one file lock per series, across threads and processes
    instances/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
                                          single instances (getSingleImage, ``tcia://``), each
                                          written atomically

A series is built in its own staging folder, verified there, and published by renaming the
folder into ``series/`` (the same file system, so the rename is atomic). Finding a cached series
reads its record and stats its files: no request. Staging folders of dead processes are removed
once nobody holds their series' lock.

The cache cannot be changed through a download destination: ``dest`` gets copies (reflinks
where the file system has them, :func:`copy_file`), never hard links. A cached file changed
anyway (size or modification time other than recorded) makes its series count as absent, so it
is fetched again; :meth:`SeriesCache.verify` re-hashes every file on request (``intake-tcia
verify``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .._validate import validate_uid
from ..errors import storage_errors

__all__ = [
    "CachedInstance",
    "CachedSeries",
    "SeriesCache",
    "RECORD_NAME",
    "LICENSE_NAME",
    "INSTANCES_DIR",
    "copy_file",
    "stamped",
    "atomic_path",
]

log = logging.getLogger("intake_tcia")

#: The file, inside a series folder, that lists what the folder holds.
RECORD_NAME = ".intake-tcia.json"
#: The licence text of the series' collection, as the server sent it.
LICENSE_NAME = "LICENSE"
#: The folder of the cache root that holds single instances: ``{SeriesInstanceUID}/{SOP}.dcm``.
INSTANCES_DIR = "instances"
_RECORD_VERSION = 1


@dataclass(frozen=True)
class CachedInstance:
    """One verified DICOM file of a cached series.

    Parameters
    ----------
    name : str
        The file name inside the series folder, e.g. ``"1-01.dcm"``.
    sop_instance_uid : str
        Its (0008,0018) *SOP Instance UID*.
    size : int
        Its size in bytes.
    md5 : str
        Its MD5 digest (hex), as the server published and the download verified.
    mtime_ns : int, optional
        Its modification time when it was recorded (nanoseconds); a file with another one has
        been changed.
    """

    name: str
    sop_instance_uid: str
    size: int
    md5: str
    mtime_ns: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CachedSeries:
    """A complete, verified series on disk.

    Parameters
    ----------
    series_uid : str
        The SeriesInstanceUID.
    path : Path
        The folder holding the series' DICOM files (and LICENSE).
    instances : tuple of CachedInstance
        The DICOM files, in the order of their names.
    license_text : str or None
        The LICENSE the server sent with the series, if any.
    metadata : dict of str to str
        Series metadata known when it was fetched (Collection, PatientID, ...), possibly empty.
    """

    series_uid: str
    path: Path
    instances: tuple[CachedInstance, ...]
    license_text: str | None
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def files(self) -> list[Path]:
        """list of Path: the DICOM files, in ``instances`` order."""
        return [self.path / i.name for i in self.instances]

    @property
    def bytes(self) -> int:
        """int: the total size of the DICOM files, in bytes."""
        return sum(i.size for i in self.instances)

    def instance_path(self, sop_instance_uid: str) -> Path:
        """Path: the file of one instance; FileNotFoundError if the series does not hold it."""
        for instance in self.instances:
            if instance.sop_instance_uid == sop_instance_uid:
                return self.path / instance.name
        raise FileNotFoundError(
            f"series {self.series_uid} has no instance with SOPInstanceUID {sop_instance_uid}"
        )

    def record(self) -> dict[str, Any]:
        """dict: the JSON record that describes this series on disk."""
        return {
            "version": _RECORD_VERSION,
            "series_uid": self.series_uid,
            "instances": [
                {"name": i.name, "sop_instance_uid": i.sop_instance_uid, "size": i.size,
                 "md5": i.md5, "mtime_ns": i.mtime_ns}
                for i in self.instances
            ],
            "license": LICENSE_NAME if self.license_text is not None else None,
            "metadata": dict(self.metadata),
        }


def read_series_folder(folder: Path, series_uid: str | None = None) -> CachedSeries | None:
    """The series a folder holds according to its record, if every file is there at its size
    and recorded modification time.

    Parameters
    ----------
    folder : Path
        A series folder (in the cache, or a download destination) holding ``RECORD_NAME``.
    series_uid : str, optional
        The series the folder must hold.

    Returns
    -------
    CachedSeries or None
        None when the record is missing, unreadable or for another series, or a file is
        missing or has another size or modification time (it was changed after it was verified).
    """
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
        if record.get("version") != _RECORD_VERSION:
            return None
        if series_uid is not None and record["series_uid"] != series_uid:
            return None
        instances = tuple(CachedInstance(**item) for item in record["instances"])
        for instance in instances:
            stat = (folder / instance.name).stat()
            if stat.st_size != instance.size or instance.mtime_ns not in (None, stat.st_mtime_ns):
                log.info("%s changed after it was verified", folder / instance.name)
                return None
        license_text = None
        if record.get("license"):
            license_text = (folder / LICENSE_NAME).read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return CachedSeries(
        record["series_uid"], folder, instances, license_text, dict(record.get("metadata") or {})
    )


def stamped(series: CachedSeries) -> CachedSeries:
    """``series`` with the modification time of each of its files as they are now."""
    instances = tuple(
        replace(i, mtime_ns=(series.path / i.name).stat().st_mtime_ns) for i in series.instances
    )
    return replace(series, instances=instances)


@contextlib.contextmanager
def atomic_path(target: Path, *, suffix: str = ".tmp", durable: bool = False) -> Iterator[Path]:
    """A new hidden path next to ``target`` to write the file into; renamed over ``target``
    when the block ends normally, removed whatever happens.

    Parameters
    ----------
    target : Path
        The file to make or replace; readers see its old content or the new, never a part.
    suffix : str
        The temporary's ending (``.nii.gz`` for writers that choose the format by it).
    durable : bool
        Flush the file to disk before the rename.
    """
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}{suffix}")
    try:
        yield temporary
        if durable:
            fsync_file(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    """Flush a written file to disk."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to a new file ``target``: a reflink where the file system has them
    (Linux FICLONE), else a copy in the kernel (``copy_file_range``), else a plain copy. Never a
    hard link, so ``target`` can be edited without changing ``source``."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        try:
            import fcntl

            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            return
        except (ImportError, OSError):
            pass
        try:
            while os.copy_file_range(src.fileno(), dst.fileno(), 1 << 30):
                pass
            return
        except (AttributeError, OSError):  # not Linux, or a file system that cannot
            src.seek(0)
            dst.seek(0)
            dst.truncate()
        shutil.copyfileobj(src, dst, 1 << 20)


_FICLONE = 0x40049409  # Linux ioctl: share the source's extents (btrfs, XFS, bcachefs)


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_record(folder: Path, series: CachedSeries) -> None:
    """Write the record of ``series`` into ``folder`` (atomically, flushed to disk)."""
    with atomic_path(folder / RECORD_NAME, durable=True) as temporary:
        temporary.write_text(json.dumps(series.record(), indent=1), encoding="utf-8")


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk (where the platform allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class SeriesCache:
    """The series cache under one root folder (see the module doc for the layout).

    Parameters
    ----------
    root : str or Path
        The cache directory; created when first written to.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"SeriesCache({str(self.root)!r})"

    def series_path(self, series_uid: str) -> Path:
        """Path: where a series is (or would be) published; ValueError for a malformed UID."""
        return self.root / "series" / validate_uid(series_uid, "series_uid")

    def get(self, series_uid: str) -> CachedSeries | None:
        """The series if it is cached, complete and verified, else None; sends no request."""
        uid = validate_uid(series_uid, "series_uid")
        return read_series_folder(self.series_path(uid), uid)

    def __contains__(self, series_uid: object) -> bool:
        try:
            return isinstance(series_uid, str) and self.get(series_uid) is not None
        except ValueError:  # not a UID, so not cached
            return False

    def lock(self, series_uid: str, *, timeout: float = -1) -> FileLock:
        """FileLock: the lock of one series, shared by threads and processes (-1: wait forever)."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(locks / f"{validate_uid(series_uid, 'series_uid')}.lock", timeout=timeout)

    @contextlib.contextmanager
    def read_lock(self, series_uid: str) -> Iterator[None]:
        """Hold the series' lock while its files are read out; a cache this process cannot
        write (read-only mount, no permission) needs none: it cannot change under the reader."""
        try:
            lock = self.lock(series_uid)
            lock.acquire()
        except OSError as exc:
            if exc.errno not in _READ_ONLY:
                raise
            yield
            return
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def staging(self, series_uid: str) -> Iterator[Path]:
        """A fresh staging folder for ``series_uid``, removed on exit whatever happens.

        Call it with the series' lock held; staging folders other processes left behind for
        the same series are removed first.
        """
        uid = validate_uid(series_uid, "series_uid")
        staging = self.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        for stale in staging.glob(f"{uid}.*"):
            if _staged_uid(stale.name) == uid:  # not "<uid>.<more digits>"
                shutil.rmtree(stale, ignore_errors=True)
        folder = staging / f"{uid}.{os.getpid()}.{secrets.token_hex(4)}"
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def publish(self, series: CachedSeries) -> CachedSeries:
        """Record a verified series built in a staging folder and rename it into the cache.

        Call it with the series' lock held, from inside :meth:`staging`. A damaged folder
        already published for the series is replaced.

        Returns
        -------
        CachedSeries
            The same series, at its place in the cache.
        """
        series = stamped(series)
        write_record(series.path, series)
        fsync_dir(series.path)
        target = self.series_path(series.series_uid)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # damaged (else it would have been found): into the staging bin
            _set_aside(target, series.path.parent / "damaged")
        try:
            os.rename(series.path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            series = _move_across_devices(series, target)
        fsync_dir(target.parent)
        return CachedSeries(
            series.series_uid, target, series.instances, series.license_text, series.metadata
        )

    def verify(self, series_uid: str) -> bool:
        """Re-hash every file of a cached series against its recorded MD5 (under its lock).

        A series that fails is removed from the cache, so the next use fetches it again.

        Returns
        -------
        bool
            True if the series is cached and every file matches; False if it is not cached or
            was damaged (and is now removed).
        """
        with self.lock(series_uid):
            series = self.get(series_uid)
            if series is None:
                return False
            bad = [i.name for i in series.instances if _md5_of(series.path / i.name) != i.md5]
        if bad:
            log.warning("series %s: %d file(s) changed in the cache (%s); removed",
                        series_uid, len(bad), ", ".join(bad[:3]))
            self.remove(series_uid)
        return not bad

    def series_uids(self) -> list[str]:
        """list of str: the UIDs of the series published in the cache (checked or not)."""
        folder = self.root / "series"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def remove(self, series_uid: str) -> bool:
        """Remove a series from the cache (under its lock); True if it was there."""
        target = self.series_path(series_uid)
        with self.lock(series_uid):
            if not target.exists():
                return False
            with self.staging(series_uid) as folder:
                _set_aside(target, folder / "series")
        return True

    def instance_path(self, series_uid: str, sop_instance_uid: str) -> Path:
        """Path: where a single instance of a series is (or would be) kept."""
        uid = validate_uid(sop_instance_uid, "sop_instance_uid")
        return self.root / INSTANCES_DIR / validate_uid(series_uid, "series_uid") / f"{uid}.dcm"

    def single_instances(self, series_uid: str) -> dict[str, Path]:
        """dict of str to Path: the single instances of a series on disk, by SOPInstanceUID."""
        folder = self.root / INSTANCES_DIR / validate_uid(series_uid, "series_uid")
        return {p.stem: p for p in folder.glob("*.dcm")}

    def store_instance(self, series_uid: str, sop_instance_uid: str, data: bytes) -> Path:
        """Keep one instance's verified bytes (written atomically); its path.

        A cache that cannot be written (read-only, full) raises :class:`TCIAStorageError`
        naming the series and the file."""
        target = self.instance_path(series_uid, sop_instance_uid)
        with storage_errors(series_uid, target):
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target, suffix=".part") as temporary:
                temporary.write_bytes(data)
        return target

    def clean_staging(self) -> int:
        """Remove staging folders nobody works on (their series' lock is free); how many."""
        staging = self.root / "staging"
        if not staging.is_dir():
            return 0
        removed = 0
        for folder in staging.iterdir():
            try:
                with self.lock(_staged_uid(folder.name), timeout=0):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
            except (Timeout, ValueError, OSError):  # busy, not ours, or a read-only cache
                continue
        return removed

#: What a write to a cache this process may only read fails with.
_READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def _set_aside(folder: Path, bin_path: Path) -> None:
    """Take a published folder out of ``series/`` into the staging bin ``bin_path`` (removed
    with its staging folder); where ``series/`` is another file system, rename it to a hidden
    name beside it and remove it there."""
    try:
        os.rename(folder, bin_path)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        hidden = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
        os.rename(folder, hidden)
        shutil.rmtree(hidden, ignore_errors=True)


def _move_across_devices(series: CachedSeries, target: Path) -> CachedSeries:
    """Publish a staged series into a ``series/`` folder on another file system than its
    staging folder (a mount inside the cache): its files are copied into a hidden folder next to
    ``target``, flushed and recorded there, then renamed into place (atomic on that side).

    Returns
    -------
    CachedSeries
        The series as recorded in ``target``.
    """
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # a run killed mid-copy
        shutil.rmtree(stale, ignore_errors=True)
    moving = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    moving.mkdir()
    try:
        for source in series.path.iterdir():
            if source.name != RECORD_NAME:
                copy_file(source, moving / source.name)
                with open(moving / source.name, "rb") as f:
                    os.fsync(f.fileno())
        copied = stamped(replace(series, path=moving))
        write_record(moving, copied)
        fsync_dir(moving)
        os.rename(moving, target)
    finally:
        shutil.rmtree(moving, ignore_errors=True)
    return copied


def _staged_uid(name: str) -> str:
    """The series UID of a staging folder named ``<uid>.<pid>.<random>``."""
    return ".".join(name.split(".")[:-2])

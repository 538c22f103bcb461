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

Each byte is written once: ``dest`` gets reflinks of the cached files where the file system has
them, else hard links (:func:`place_file`; a copy only across file systems). What the cache
calls verified cannot be changed from outside: the record keeps each file's size, modification
time and change time (``ctime``, which every write, and every new link, moves and no user can set
back). A file whose stamps differ from the record, edited in ``dest`` through its link or in the
cache, is hashed again before the cache serves it: if it still has its MD5 the record is
stamped anew, else its series counts as absent and is fetched again. :meth:`SeriesCache.verify`
re-hashes every file on request (``intake-tcia verify``).

Durability costs no flush per file: files are written and published without ``fsync`` (the
directory holding the published series is flushed once per series), and the record names the
boot they were written in (Linux's ``boot_id``). After a crash of the machine (a new boot), a
series whose files were never known to be on disk is hashed again in full on its first use;
a killed process loses nothing the kernel holds. Where there is no boot id, each file is flushed
before publishing, as before.
"""

from __future__ import annotations

import contextlib
import errno
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
from .files import atomic_path, boot_id, copy_file, fsync_dir, md5_of, place_file

__all__ = [
    "CachedInstance",
    "CachedSeries",
    "SeriesCache",
    "RECORD_NAME",
    "LICENSE_NAME",
    "INSTANCES_DIR",
    "copy_file",
    "place_file",
    "boot_id",
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
    ctime_ns : int, optional
        Its change time when it was recorded (nanoseconds); a file with another one has been
        written, linked or had its times set since.
    """

    name: str
    sop_instance_uid: str
    size: int
    md5: str
    mtime_ns: int | None = field(default=None, compare=False)
    ctime_ns: int | None = field(default=None, compare=False)


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
    unflushed_boot : str, optional
        The boot id of the machine when the files were written without being flushed to disk;
        None when they are known to be on disk. After another boot they are hashed again.
    """

    series_uid: str
    path: Path
    instances: tuple[CachedInstance, ...]
    license_text: str | None
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)
    unflushed_boot: str | None = field(default=None, compare=False)

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
                 "md5": i.md5, "mtime_ns": i.mtime_ns, "ctime_ns": i.ctime_ns}
                for i in self.instances
            ],
            "license": LICENSE_NAME if self.license_text is not None else None,
            "metadata": dict(self.metadata),
            "unflushed_boot": self.unflushed_boot,
        }


def read_series_folder(
    folder: Path, series_uid: str | None = None, *, rehash: bool = False
) -> CachedSeries | None:
    """The series a folder holds according to its record, if every file is there as recorded.

    Parameters
    ----------
    folder : Path
        A series folder (in the cache, or a download destination) holding ``RECORD_NAME``.
    series_uid : str, optional
        The series the folder must hold.
    rehash : bool
        What to do with a file at its recorded size whose modification or change time differs
        from the record (or with every file, after a reboot that may have lost unflushed
        writes): False, count the series as absent; True, hash it and keep the series if the
        MD5 still matches (the series returned then carries the stamps as they are now, and
        ``unflushed_boot`` None when every file was read back).

    Returns
    -------
    CachedSeries or None
        None when the record is missing, unreadable or for another series, or a file is
        missing, has another size, or (see ``rehash``) was changed after it was verified.
    """
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
        if record.get("version") != _RECORD_VERSION:
            return None
        if series_uid is not None and record["series_uid"] != series_uid:
            return None
        instances = tuple(CachedInstance(**item) for item in record["instances"])
        unflushed = record.get("unflushed_boot")
        rebooted = unflushed is not None and unflushed != boot_id()
        checked = []
        for instance in instances:
            path = folder / instance.name
            stat = path.stat()
            if stat.st_size != instance.size:
                log.info("%s changed after it was verified", path)
                return None
            if rebooted or not _same_stamps(instance, stat):
                if not rehash or md5_of(path) != instance.md5:
                    log.info("%s changed after it was verified", path)
                    return None
                instance = replace(instance, mtime_ns=stat.st_mtime_ns, ctime_ns=stat.st_ctime_ns)
            checked.append(instance)
        license_text = None
        if record.get("license"):
            license_text = (folder / LICENSE_NAME).read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return CachedSeries(
        record["series_uid"], folder, tuple(checked), license_text,
        dict(record.get("metadata") or {}), None if rebooted else unflushed,
    )


def _same_stamps(instance: CachedInstance, stat: os.stat_result) -> bool:
    """Whether a file's times are the recorded ones (a time not recorded matches any)."""
    return instance.mtime_ns in (None, stat.st_mtime_ns) and instance.ctime_ns in (
        None, stat.st_ctime_ns)


def stamped(series: CachedSeries) -> CachedSeries:
    """``series`` with the modification and change time of each of its files as they are now."""
    instances = []
    for instance in series.instances:
        stat = (series.path / instance.name).stat()
        instances.append(replace(instance, mtime_ns=stat.st_mtime_ns, ctime_ns=stat.st_ctime_ns))
    return replace(series, instances=tuple(instances))


def _matches(path: Path, instance: CachedInstance) -> bool:
    """Whether a file is there at its recorded size and MD5."""
    try:
        return path.stat().st_size == instance.size and md5_of(path) == instance.md5
    except OSError:
        return False


def _stamps(series: CachedSeries | None) -> Any:
    """What a record holds besides the files' names and MD5s: their times, the boot."""
    if series is None:
        return None
    return series.unflushed_boot, [(i.mtime_ns, i.ctime_ns) for i in series.instances]


def _as_recorded(folder: Path) -> CachedSeries | None:
    """The series as its record in ``folder`` describes it, nothing checked; None when the
    record cannot be read."""
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
        instances = tuple(CachedInstance(**item) for item in record["instances"])
        license_text = None
        if record.get("license"):
            license_text = (folder / LICENSE_NAME).read_text(encoding="utf-8", errors="replace")
        return CachedSeries(record["series_uid"], folder, instances, license_text,
                            dict(record.get("metadata") or {}), record.get("unflushed_boot"))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def write_record(folder: Path, series: CachedSeries, *, durable: bool = False) -> None:
    """Write the record of ``series`` into ``folder`` (atomically; ``durable``: flushed)."""
    with atomic_path(folder / RECORD_NAME, durable=durable) as temporary:
        temporary.write_text(json.dumps(series.record(), indent=1), encoding="utf-8")


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
        """The series if it is cached, complete and verified, else None; sends no request.

        A file whose times changed since it was recorded (written, or linked again) is hashed
        again first; the record is stamped anew when it still matches."""
        uid = validate_uid(series_uid, "series_uid")
        folder = self.series_path(uid)
        series = read_series_folder(folder, uid, rehash=True)
        if series is not None and _stamps(series) != _stamps(_as_recorded(folder)):
            self._restamp(series)
        return series

    def restamp(self, series: CachedSeries) -> CachedSeries:
        """Record the times of a cached series' files as they are now, where only their change
        time moved (new links to them); call it with the series' lock held. Files whose size
        or modification time moved keep their stamps (they are hashed on next use)."""
        found = []
        for instance in series.instances:
            stat = (series.path / instance.name).stat()
            if stat.st_size == instance.size and instance.mtime_ns == stat.st_mtime_ns:
                instance = replace(instance, ctime_ns=stat.st_ctime_ns)
            found.append(instance)
        series = replace(series, instances=tuple(found))
        with contextlib.suppress(OSError):  # a cache this process cannot write: hashed next time
            write_record(series.path, series)
        return series

    def _restamp(self, series: CachedSeries) -> None:
        """Rewrite a series' record with the stamps ``series`` carries (best effort: a cache
        this process cannot write keeps the old ones, and hashes again next time)."""
        with contextlib.suppress(OSError, Timeout):
            with self.lock(series.series_uid, timeout=0):
                write_record(series.path, series)

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
        series = replace(stamped(series), unflushed_boot=boot_id())
        write_record(series.path, series, durable=series.unflushed_boot is None)
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
        fsync_dir(target.parent)  # the one flush of a series (see the module doc)
        return replace(series, path=target)

    def verify(self, series_uid: str) -> bool:
        """Re-hash every file of a cached series against its recorded MD5 (under its lock).

        A series that fails is removed from the cache, so the next use fetches it again; one
        that passes is stamped anew (and known to be on disk).

        Returns
        -------
        bool
            True if the series is cached and every file matches; False if it is not cached or
            was damaged (and is now removed).
        """
        with self.lock(series_uid):
            folder = self.series_path(series_uid)
            if not (folder / RECORD_NAME).exists():
                return False
            series = _as_recorded(folder)
            bad = ["the record"] if series is None else [
                i.name for i in series.instances if not _matches(series.path / i.name, i)]
            if not bad and series is not None:
                write_record(folder, replace(stamped(series), unflushed_boot=None))
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
        copied = stamped(replace(series, path=moving, unflushed_boot=None))
        write_record(moving, copied, durable=True)
        fsync_dir(moving)
        os.rename(moving, target)
    finally:
        shutil.rmtree(moving, ignore_errors=True)
    return copied


def _staged_uid(name: str) -> str:
    """The series UID of a staging folder named ``<uid>.<pid>.<random>``."""
    return ".".join(name.split(".")[:-2])

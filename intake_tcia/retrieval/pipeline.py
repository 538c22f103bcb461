"""Writing one series into the cache: staging, hashing, checking, verification, publishing.

Any source of instances plugs in here: the NBIA zip (:mod:`intake_tcia.nbia.getimage` hands over
each member while the zip arrives) or one object per instance (IDC, from parallel threads). A
:class:`SeriesWriter` builds the series in a staging folder of the cache and publishes it only
when it is complete and verified::

    with cache.lock(uid), SeriesWriter(cache, uid, expected_count=n, size_limit=m) as writer:
        for name, chunks in source:
            writer.add(name, chunks)              # checked, hashed, written as bytes arrive
        writer.expect_md5s(server_md5s)           # at any time (NBIA's md5hashes.csv comes last)
        series = writer.publish()                 # count, every MD5, then one atomic rename

A file's verdict needs both its bytes and its expected MD5: a file that is not DICOM (or of
another series) fails at once when its MD5 is known and matches (the archive holds it so: not
retryable); before that, it fails as corrupt data (retryable) unless the MD5 then confirms it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .._validate import name_problem
from ..errors import TCIAIntegrityError, TCIAStorageError, UnsafeArchiveError, storage_errors
from .cache import LICENSE_NAME, CachedInstance, CachedSeries, SeriesCache
from .dicomhead import Instance, check_instance
from .files import boot_id, fsync_file

__all__ = ["SeriesWriter", "SeriesFolder", "MD5_MEMBER"]

_READERS_IMPORT = threading.Lock()

log = logging.getLogger("intake_tcia")

#: The member of an NBIA zip listing every file's MD5 (``Filename,MD5Hash``); never a file.
MD5_MEMBER = "md5hashes.csv"
#: The first bytes of each file kept in memory, to check its header without reading it again.
_HEAD = 1 << 16
_flusher: ThreadPoolExecutor | None = None
_flusher_lock = threading.Lock()
_FLUSHED: Future[None] = Future()
_FLUSHED.set_result(None)


def _flush_later(path: Path) -> Future[None]:
    """Flush a written file to disk on a background thread (while the next bytes arrive), where
    the machine has no boot id; else nothing: the cache hashes a series again on its first use
    after a reboot (see :mod:`intake_tcia.cache`) rather than flushing every file."""
    global _flusher
    if boot_id() is not None:
        return _FLUSHED
    with _flusher_lock:
        if _flusher is None:
            _flusher = ThreadPoolExecutor(2, thread_name_prefix="intake-tcia-flush")
    return _flusher.submit(fsync_file, path)


@dataclass
class _File:
    name: str
    size: int
    md5: str
    sop_instance_uid: str
    problem: str | None  # why it is no instance of the series (judged once its MD5 is known)
    flushed: Future[None]


class SeriesFolder:
    """A series being built in a folder: files checked, hashed and written as bytes arrive.

    Parameters
    ----------
    folder : Path
        Where the files go; made here, must not exist yet.
    series_uid : str
        The series (named in errors; every DICOM file must belong to it).
    expected_count : int, optional
        The number of DICOM files the series has (more are refused as they come, fewer at
        :meth:`complete`).
    size_limit : int
        The most bytes all files may hold together (a zip bomb stops there).
    study_uid : str, optional
        The StudyInstanceUID every file must have (default: that of the first file).
    promised_by : str
        What promised ``expected_count``, for messages (``"getSeriesSize"``).
    """

    def __init__(
        self, folder: Path, series_uid: str, *, expected_count: int | None, size_limit: int,
        study_uid: str | None = None, promised_by: str = "getSeriesSize",
    ) -> None:
        self.folder = folder
        self.series_uid = series_uid
        self.expected_count = expected_count
        self.size_limit = size_limit
        self.study_uid = study_uid
        self.promised_by = promised_by
        self._sops: dict[str, str] = {}  # SOPInstanceUID -> the file holding it
        self._lock = threading.Lock()
        self._names: set[str] = set()
        self._files: dict[str, _File] = {}
        self._expected: dict[str, str] = {}
        self._total = 0
        self._dicom_names = 0
        folder.mkdir()

    def _refuse(self, name: str, problem: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"series {self.series_uid}: member {name!r} {problem}; refusing it"
        )

    def _claim(self, name: str) -> None:
        problem = name_problem(name)
        if problem is None and name == MD5_MEMBER:
            problem = "is a reserved name"
        if problem:
            raise self._refuse(name, problem)
        with self._lock:
            if name.casefold() in self._names:
                raise self._refuse(name, "appears twice")
            self._names.add(name.casefold())
            if name != LICENSE_NAME:
                self._dicom_names += 1
                if self.expected_count is not None and self._dicom_names > self.expected_count:
                    raise UnsafeArchiveError(
                        f"series {self.series_uid}: {self.promised_by} promised "
                        f"{self.expected_count} files, {name!r} is one more; refusing it"
                    )

    def _reserve(self, n: int) -> None:
        with self._lock:
            self._total += n
            if self._total > self.size_limit:
                raise UnsafeArchiveError(
                    f"series {self.series_uid}: the files hold over {self._total} bytes, more "
                    f"than the {self.size_limit} the series' size allows (a zip bomb); refusing it"
                )

    def add(self, name: str, chunks: Iterable[bytes], *, expected_md5: str | None = None) -> str:
        """Write one file from its bytes as they arrive; its MD5 (hex). Thread-safe.

        Parameters
        ----------
        name : str
            The file name (plain: no folder, no ``..``, not hidden or reserved, at most 255
            bytes; once per series, ignoring case). ``LICENSE`` is the collection's licence.
        chunks : iterable of bytes
            The file's bytes.
        expected_md5 : str, optional
            Its MD5 as the source publishes it (else given by :meth:`expect_md5s`).

        Raises
        ------
        UnsafeArchiveError
            For a name that cannot be a file here, a duplicate, one file more than
            ``expected_count``, or bytes past ``size_limit``.
        TCIAIntegrityError
            When the MD5 differs from the expected one, or the file (its MD5 confirmed) is not
            DICOM of this series.
        TCIAStorageError
            When the file cannot be written (no space, ...).
        """
        self._claim(name)
        path = self.folder / name
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        head = b""
        with storage_errors(self.series_uid, path), open(path, "xb") as sink:
            for chunk in chunks:
                self._reserve(len(chunk))
                digest.update(chunk)
                sink.write(chunk)
                size += len(chunk)
                if len(head) < _HEAD:
                    head += chunk[: _HEAD - len(head)]
        md5 = digest.hexdigest()
        found = Instance() if name == LICENSE_NAME else _instance_of(path, head, size)
        with self._lock:
            problem = found.problem if name == LICENSE_NAME else self._belongs(name, found)
            entry = _File(name, size, md5, found.sop, problem, _flush_later(path))
            self._files[name] = entry
            if expected_md5 is not None:
                self._expected[name] = expected_md5.strip().lower()
            self._judge(entry)
        return md5

    def _belongs(self, name: str, found: Instance) -> str | None:
        """Why a file is no complete instance of this series, once in it (lock held)."""
        if found.problem is not None:
            return found.problem
        if found.series != self.series_uid:
            return (f"is an instance of series {found.series}" if found.series
                    else "has no Series Instance UID")
        if self.study_uid is None:
            self.study_uid = found.study
        elif found.study != self.study_uid:
            return f"is an instance of study {found.study}, the series is of {self.study_uid}"
        other = self._sops.setdefault(found.sop, name)
        if other != name:
            return f"holds instance {found.sop}, as {other} does (one instance twice)"
        return None

    def expect_md5s(self, md5s: Mapping[str, str]) -> None:
        """The MD5 (hex) of each file the series must hold (NBIA's ``md5hashes.csv``); files
        already written are judged now, the others as they come.

        Raises
        ------
        TCIAIntegrityError
            As :meth:`add`, for a file already written.
        """
        with self._lock:
            self._expected.update({k: v.strip().lower() for k, v in md5s.items()})
            for entry in list(self._files.values()):
                self._judge(entry)

    def _judge(self, entry: _File) -> None:
        """Raise for a file whose MD5 is known and wrong, or known and right for a file that is
        no instance of the series (call with the lock held)."""
        expected = self._expected.get(entry.name)
        if expected is None:
            return
        if entry.md5 != expected:
            raise TCIAIntegrityError(
                f"series {self.series_uid}: MD5 of {entry.name} is {entry.md5}, the server says "
                f"{expected}"
            )
        if entry.problem is not None:
            raise TCIAIntegrityError(
                f"series {self.series_uid}: {entry.name} {entry.problem} (its MD5 matches, so "
                "the archive holds it so); refusing the series",
                retryable=False,
            )

    def complete(self) -> CachedSeries:
        """The series, once every file is there, verified and flushed to disk.

        Raises
        ------
        TCIAIntegrityError
            For a file with no expected MD5 or that is no instance of the series, an expected
            file that never came, or fewer files than ``expected_count``.
        """
        with self._lock:
            files = dict(self._files)
            expected = dict(self._expected)
        uid = self.series_uid
        dicom = [f for f in files.values() if f.name != LICENSE_NAME]
        for entry in dicom:
            if entry.name not in expected:
                raise TCIAIntegrityError(f"series {uid}: {entry.name} has no MD5 in {MD5_MEMBER}")
            if entry.problem is not None:  # pragma: no cover - _judge raised already
                raise TCIAIntegrityError(f"series {uid}: {entry.name} {entry.problem}")
        missing = sorted(set(expected) - set(files))
        if missing:
            raise TCIAIntegrityError(
                f"series {uid}: {MD5_MEMBER} lists {len(missing)} file(s) missing from the zip, "
                f"e.g. {missing[0]}"
            )
        if self.expected_count is not None and len(dicom) < self.expected_count:
            raise TCIAIntegrityError(
                f"series {uid}: {len(dicom)} files arrived, {self.promised_by} promised "
                f"{self.expected_count}"
            )
        try:
            for entry in files.values():
                entry.flushed.result()
        except OSError as exc:
            raise TCIAStorageError.naming(uid, exc, self.folder) from exc
        instances = sorted(
            (CachedInstance(f.name, f.sop_instance_uid, f.size, f.md5) for f in dicom),
            key=lambda i: i.name,
        )
        license_text = None
        if LICENSE_NAME in files:
            license_text = (self.folder / LICENSE_NAME).read_text(
                encoding="utf-8", errors="replace"
            )
        return CachedSeries(uid, self.folder, tuple(instances), license_text)


class SeriesWriter(SeriesFolder):
    """One series written into a staging folder of ``cache``, published when verified.

    Hold the series' lock (``cache.lock(series_uid)``) around it. The staging folder is made on
    entering the block and removed on leaving it, whatever happens: a series is published by
    :meth:`publish` or not at all. :meth:`add` may be called from several threads at once; join
    them before leaving the block.

    Parameters
    ----------
    cache : SeriesCache
        Where the series goes.
    series_uid : str
        The SeriesInstanceUID.
    expected_count : int, optional
        The number of DICOM files of the series (the source's promise).
    size_limit : int
        The most bytes the files may hold together.
    metadata : mapping, optional
        Series metadata to keep in the cache record (layout fields).
    study_uid, promised_by
        As :class:`SeriesFolder`.
    """

    def __init__(
        self,
        cache: SeriesCache,
        series_uid: str,
        *,
        expected_count: int | None,
        size_limit: int,
        metadata: Mapping[str, Any] | None = None,
        study_uid: str | None = None,
        promised_by: str = "getSeriesSize",
    ) -> None:
        self.cache = cache
        self.series_uid = series_uid
        self.metadata = {k: str(v) for k, v in (metadata or {}).items() if v is not None}
        self._staging: Any = None
        self._pending = (series_uid, expected_count, size_limit, study_uid, promised_by)

    def __enter__(self) -> SeriesWriter:
        uid, count, limit, study, promised_by = self._pending
        self._staging = self.cache.staging(uid)
        folder = self._staging.__enter__()
        try:
            super().__init__(folder / "series", uid, expected_count=count, size_limit=limit,
                             study_uid=study, promised_by=promised_by)
        except BaseException:
            self._staging.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            flushing = [f.flushed for f in self._files.values()]
        for future in flushing:  # no flush may run on a folder being removed
            future.exception()
        self._staging.__exit__(kind, error, traceback)

    def publish(self) -> CachedSeries:
        """Check the series is complete and verified (:meth:`complete`), then publish it into the
        cache with one atomic rename.

        Returns
        -------
        CachedSeries
            The series at its place in the cache.
        """
        series = self.complete()
        with storage_errors(self.series_uid, self.cache.root):
            return self.cache.publish(
                CachedSeries(
                    series.series_uid,
                    series.path,
                    series.instances,
                    series.license_text,
                    self.metadata,
                )
            )


class _ReadAt:
    """``read_at(offset, n)`` of a written file, opened on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: Any = None

    def __call__(self, offset: int, n: int) -> bytes:
        if self.file is None:
            self.file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self.file.seek(offset)
        return self.file.read(n)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _instance_of(path: Path, head: bytes, size: int) -> Instance:
    """What a written file is (its UIDs) and why it is no complete instance; ``head`` holds its
    first bytes. Walked without reading its values (:func:`check_instance`); pydicom reads
    what that walk leaves to it."""
    reader = _ReadAt(path)
    try:
        found = check_instance(head, size, reader)
    finally:
        reader.close()
    return found if found is not None else _instance_by_pydicom(path)


def _instance_by_pydicom(path: Path) -> Instance:
    import_readers()
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        found = Instance(str(ds.get("SOPInstanceUID") or ""),
                         str(ds.get("SeriesInstanceUID") or ""),
                         str(ds.get("StudyInstanceUID") or ""))
    except Exception as exc:  # noqa: BLE001 - a file pydicom cannot read to its end
        return Instance(problem=f"cannot be read to its end ({exc})")
    if not found.sop:
        found.problem = "has no SOP Instance UID"
    return found


def import_readers() -> None:
    """Import pydicom's reader, one thread at a time: several threads importing it at once can
    see it half initialised (a circular-import error). Only a file the header walk leaves to
    pydicom needs it, so a download that has none never imports it."""
    with _READERS_IMPORT:
        import pydicom.filereader  # noqa: F401


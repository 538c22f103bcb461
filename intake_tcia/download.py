"""Series retrieval: stream a getImage zip to disk, check it, verify every MD5, publish it.

One series (:func:`fetch_series`): the zip is streamed in small chunks into a staging folder of
the cache (memory stays flat whatever the series size), its members are checked before anything
is extracted (no absolute paths, ``..``, links, duplicates, or more bytes than getSeriesSize
promised), each file is extracted while its MD5 is computed and compared with the server's
``md5hashes.csv``, and the verified folder is renamed into the cache. A truncated zip, a wrong
MD5 or a lost connection is retried with exponential backoff; an unsafe zip is not.

Many series (:func:`download`): a bounded pool of threads fetches what the cache lacks, then
fills a folder layout under ``dest`` from the cache with copies (reflinks where the file
system has them; never hard links), and returns one status row per series.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import secrets
import stat
import string
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import backends
from ._validate import is_reserved_name, validate_uid
from .cache import (
    LICENSE_NAME,
    RECORD_NAME,
    CachedInstance,
    CachedSeries,
    copy_file,
    read_series_folder,
    stamped,
)
from .cache import write_record as _write_record
from .errors import (
    DownloadError,
    TCIAConnectionError,
    TCIAError,
    TCIAIntegrityError,
    TCIAResponseError,
    TCIAStorageError,
    UnsafeArchiveError,
)
from .manifest import series_uid_values
from .schema import SCHEMAS

if TYPE_CHECKING:
    import pydicom

    from ._http import RetryBudget
    from .client import TCIAClient

__all__ = [
    "fetch_series",
    "download",
    "read_series",
    "check_members",
    "DEFAULT_LAYOUT",
    "FLAT_LAYOUT",
    "LAYOUT_FIELDS",
    "RESULT_COLUMNS",
]

log = logging.getLogger("intake_tcia")

#: Where :func:`download` puts each series under ``dest`` by default (as idc-index's dirTemplate).
DEFAULT_LAYOUT = "{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}"
#: One folder per series, named by its UID.
FLAT_LAYOUT = "{SeriesInstanceUID}"
#: The fields a layout may use: series metadata columns (getSeries and getSeriesMetadata).
LAYOUT_FIELDS = frozenset(SCHEMAS["getSeries"].names) & frozenset(
    SCHEMAS["getSeriesMetadata"].names
)
#: The columns of the table :func:`download` returns.
RESULT_COLUMNS = ("SeriesInstanceUID", "status", "path", "files", "bytes", "error")

MD5_MEMBER = "md5hashes.csv"
#: Read and write sizes: small, as many series may be arriving and extracted at once.
_STREAM_CHUNK = 1 << 18
_EXTRACT_CHUNK = 1 << 18
#: A member inflating more than this (deflate's own limit is about 1032) is a zip bomb.
MAX_COMPRESSION_RATIO = 200
#: Members smaller than this are not judged by their compression ratio.
_RATIO_MIN_SIZE = 1 << 20
#: A zip may hold this much more than getSeriesSize promised (LICENSE, md5hashes.csv, drift).
_SIZE_TOLERANCE = 0.5
_SIZE_SLACK = 1 << 20
_MAX_NAME_BYTES = 255  # a file name's limit on every common file system
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._+=@,-]+")

Progress = Callable[[int], None]


class _BodyLost(TCIAConnectionError):
    """The connection broke while the zip was arriving (retried by :func:`fetch_series`)."""


class _Cancelled(Exception):
    """The download was interrupted (Ctrl-C in the thread that waits for the workers)."""


# -- one series -----------------------------------------------------------------------------------


def fetch_series(
    client: TCIAClient,
    series_uid: str,
    *,
    collection: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    slots: threading.Semaphore | None = None,
) -> CachedSeries:
    """A series from the cache, else downloaded once, verified and published to the cache.

    A per-series file lock makes threads and processes that want the same series wait for
    the one that downloads it. Truncated zips, MD5 mismatches and lost connections are retried
    ``client.settings.retries`` times with exponential backoff; nothing partial is ever left in
    the cache.

    Parameters
    ----------
    client : TCIAClient
        Its cache, transport, retry policy and host routing are used.
    series_uid : str
        The SeriesInstanceUID.
    collection : str, optional
        The series' collection, if known: routes NLST series to their host with no lookup.
    metadata : mapping, optional
        Series metadata to keep in the cache record (layout fields); ``FileSize`` and
        ``ImageCount``, when given, spare the getSeriesSize request.
    progress : callable, optional
        Called with the number of bytes received, as they arrive (negative to take back the
        bytes of a failed attempt).
    slots : threading.Semaphore, optional
        Held while the zip arrives (not while it is checked and extracted), to bound the
        connections of several callers: :func:`download` overlaps one series' extraction
        with the next one's transfer this way.

    Returns
    -------
    CachedSeries

    Raises
    ------
    ValueError
        If ``series_uid`` is not a UID.
    TCIANotFoundError
        If no host knows the series.
    UnsafeArchiveError
        If the zip would write outside its folder, holds links or duplicates, or inflates far
        beyond the series' size.
    TCIAIntegrityError, TCIAConnectionError
        If every attempt failed; the message names the series.
    """
    uid = validate_uid(series_uid, "series_uid")
    cache = client.cache
    found = cache.get(uid)
    if found is not None:
        return found
    metadata = {k: _plain(v) for k, v in (metadata or {}).items()}
    collection = collection or metadata.get("Collection")
    if collection:
        client.remember_host(uid, client.settings.host_for(collection))
    with cache.lock(uid):
        found = cache.get(uid)  # another thread or process may have fetched it meanwhile
        if found is not None:
            return found
        limit, count = _size_limit(client, uid, metadata)
        keep = {k: str(v) for k, v in metadata.items() if k in LAYOUT_FIELDS and v is not None}
        try:
            return _fetch_with_retries(client, uid, (limit, count), keep, progress or _ignore,
                                       slots)
        except OSError as exc:
            if isinstance(exc, TCIAError):
                raise
            raise _storage_error(uid, exc) from exc


def _fetch_with_retries(
    client: TCIAClient,
    uid: str,
    limits: tuple[int, int],
    metadata: dict[str, str],
    progress: Progress,
    slots: threading.Semaphore | None,
) -> CachedSeries:
    budget = client._transport.budget()  # one budget for statuses, resets and bad zips alike
    deadline = time.monotonic() + client.settings.series_timeout  # retries included
    while True:
        counter = _Counter(progress)
        try:
            with client.cache.staging(uid) as staging:
                series = _fetch_once(client, uid, staging, limits, counter, budget, slots,
                                     deadline)
                return client.cache.publish(replace(series, metadata=metadata))
        except BaseException as exc:
            counter.take_back()
            if isinstance(exc, UnsafeArchiveError) or not isinstance(
                exc, (TCIAIntegrityError, _BodyLost)
            ):
                raise
            pause = budget.spend()
            if pause is not None and time.monotonic() + pause > deadline:
                pause = None  # no time left for another attempt
            if pause is None:
                kind = TCIAIntegrityError if isinstance(exc, TCIAIntegrityError) else (
                    TCIAConnectionError
                )
                raise kind(f"series {uid}: failed {budget.used + 1} time(s); last: {exc}") from exc
            log.info("series %s: %s; retrying in %.2f s", uid, exc, pause)
        time.sleep(pause)


class _Counter:
    """Passes byte counts on to a progress callback, and can take back what it passed."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.total = 0

    def __call__(self, n: int) -> None:
        self.progress(n)
        self.total += n

    def take_back(self) -> None:
        if self.total:
            self.progress(-self.total)
            self.total = 0


def _fetch_once(
    client: TCIAClient,
    uid: str,
    staging: Path,
    limits: tuple[int, int],
    progress: Progress,
    budget: RetryBudget,
    slots: threading.Semaphore | None,
    deadline: float,
) -> CachedSeries:
    """Stream the zip into ``staging``, then check, extract and verify it there; ``limits``
    are the most bytes and DICOM files the series may have, ``deadline`` (monotonic seconds)
    when the zip must have arrived."""
    limit, count = limits
    zip_path = staging / "series.zip"
    params = {"SeriesInstanceUID": uid, "NewFileNames": "Yes", "IncludeMD5": "Yes"}
    transport = client._transport

    def stream(host: str) -> None:
        # Status errors and refused connections are retried inside the transport, on `budget`.
        with (
            slots or contextlib.nullcontext(),
            transport.stream(host + "getImage", params, budget=budget) as response,
            open(zip_path, "wb") as f,
        ):
            size = 0
            try:
                for chunk in transport.iter_body(response, _STREAM_CHUNK, deadline=deadline):
                    size += len(chunk)
                    if size > limit:
                        raise UnsafeArchiveError(
                            f"series {uid}: the zip is over {limit} bytes, far more than the "
                            "series' size; refusing it"
                        )
                    f.write(chunk)
                    progress(len(chunk))
            except TCIAConnectionError as exc:
                raise _BodyLost(f"series {uid}: {exc}") from exc
            except TCIAResponseError as exc:  # the deadline passed
                raise TCIAResponseError(
                    f"series {uid}: not received within series_timeout "
                    f"({client.settings.series_timeout:g} s): {exc}"
                ) from exc
            f.flush()

    client.on_series_host(uid, stream)
    folder = staging / "series"
    series = extract_series(zip_path, folder, uid, limit=limit, max_files=count)
    zip_path.unlink()
    return series


def _size_limit(client: TCIAClient, uid: str, metadata: Mapping[str, Any]) -> tuple[int, int]:
    """The most bytes a series' zip may hold (getSeriesSize's promise plus a tolerance), and
    the number of DICOM files it promises."""
    size, count = metadata.get("FileSize"), metadata.get("ImageCount")
    if size is None or count is None:
        promised = client.series_size(uid)
        size, count = promised["TotalSizeInBytes"], promised["ObjectCount"]
    return int(int(size) * (1 + _SIZE_TOLERANCE)) + _SIZE_SLACK + 256 * int(count), int(count)


def _plain(value: Any) -> Any:
    """A metadata value with missing values (NaN, NA, NaT) as None."""
    try:
        return None if pd.isna(value) else value
    except (TypeError, ValueError):  # list-likes
        return value


def _ignore(n: int) -> None:
    """A progress callback that does nothing."""


# -- checking and extracting a zip ----------------------------------------------------------------


def check_members(uid: str, members: Iterable[zipfile.ZipInfo], limit: int) -> None:
    """Refuse a zip whose members are not plain, distinct files of a plausible total size.

    Parameters
    ----------
    uid : str
        The series (named in errors).
    members : iterable of zipfile.ZipInfo
        The zip's central directory.
    limit : int
        The most uncompressed bytes the members may hold in all.

    Raises
    ------
    UnsafeArchiveError
        For an absolute path, a ``..`` component, a folder or nested name, a symbolic link or
        other special file, an encrypted member, two members with one name (ignoring case),
        a member inflating more than :data:`MAX_COMPRESSION_RATIO` times, or a total over
        ``limit``.
    """
    seen: set[str] = set()
    total = 0
    for info in members:
        problem = _member_problem(info, seen)
        if problem:
            raise UnsafeArchiveError(
                f"series {uid}: zip member {info.filename!r} {problem}; refusing it"
            )
        seen.add(info.filename.casefold())
        total += info.file_size
        if total > limit:
            raise UnsafeArchiveError(
                f"series {uid}: the zip inflates to over {total} bytes, more than the {limit} "
                "the series' size allows (a zip bomb); refusing it"
            )


def _member_problem(info: zipfile.ZipInfo, seen: set[str]) -> str | None:
    """Why one zip member is unsafe, or None."""
    problem = _name_problem(info.filename)
    if problem:
        return problem
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "is a symbolic link"
    if kind not in (0, stat.S_IFREG):
        return f"is not a regular file (mode {oct(kind)})"
    if info.flag_bits & 0x1:
        return "is encrypted"
    if info.filename.casefold() in seen:
        return "appears twice"
    if info.file_size > _RATIO_MIN_SIZE and info.file_size > MAX_COMPRESSION_RATIO * max(
        info.compress_size, 1
    ):
        return f"inflates {info.compress_size} bytes to {info.file_size} (a zip bomb)"
    return None


def _name_problem(name: str) -> str | None:
    """Why a member name is unsafe or unexpected, or None for a plain file name."""
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in parts:
        return "has a '..' component"
    if len(parts) > 1:
        return "is in a folder (a series zip is flat)"
    if not name or name.startswith(".") or "\0" in name:
        return "is not a plain file name"
    if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES or is_reserved_name(name):
        return "cannot be a file name (over 255 bytes, or a name Windows reserves)"
    return None


def extract_series(
    zip_path: Path, folder: Path, uid: str, *, limit: int, max_files: int | None = None
) -> CachedSeries:
    """Check a series zip, extract it into ``folder`` and verify every file's MD5.

    Parameters
    ----------
    zip_path : Path
        The downloaded zip (getImage with ``IncludeMD5=Yes``, or getImageWithMD5Hash).
    folder : Path
        Where the files go; must not exist yet.
    uid : str
        The series (named in errors).
    limit : int
        The most uncompressed bytes the zip may hold.
    max_files : int, optional
        The most DICOM files it may hold (getSeriesSize's ObjectCount).

    Returns
    -------
    CachedSeries
        The series in ``folder`` (files flushed to disk; no record written yet).

    Raises
    ------
    UnsafeArchiveError
        See :func:`check_members`; also for more DICOM files than ``max_files``.
    TCIAIntegrityError
        If the zip is truncated or corrupt, has no ``md5hashes.csv``, a file's MD5 differs
        from it or is missing from it, a member is shorter or longer than its declared size,
        or a file is not DICOM.
    """
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = zf.infolist()
            check_members(uid, members, limit)
            files = [i for i in members if i.filename not in (MD5_MEMBER, LICENSE_NAME)]
            if max_files is not None and len(files) > max_files:
                raise UnsafeArchiveError(
                    f"series {uid}: the zip holds {len(files)} files, getSeriesSize promised "
                    f"{max_files}; refusing it"
                )
            md5s = _read_md5s(zf, uid)
            folder.mkdir()
            instances = []
            has_license = False
            for info in members:
                if info.filename == MD5_MEMBER:
                    continue
                digest = _extract_member(zf, info, folder / info.filename, uid)
                expected = md5s.pop(info.filename, None)
                if info.filename == LICENSE_NAME:  # listed in md5hashes.csv or not
                    has_license = True
                    if expected is not None and digest != expected:
                        raise TCIAIntegrityError(f"series {uid}: MD5 of {LICENSE_NAME} differs")
                    continue
                if expected is None:
                    raise TCIAIntegrityError(
                        f"series {uid}: {info.filename} has no MD5 in {MD5_MEMBER}"
                    )
                if digest != expected:
                    raise TCIAIntegrityError(
                        f"series {uid}: MD5 of {info.filename} is {digest}, the server's "
                        f"{MD5_MEMBER} says {expected}"
                    )
                sop = _sop_instance_uid(folder / info.filename)
                if not sop and not _has_dicom_prefix(folder / info.filename):
                    raise TCIAIntegrityError(
                        f"series {uid}: {info.filename} is not DICOM (its MD5 matches, so the "
                        "archive holds it so); refusing the series"
                    )
                instances.append(CachedInstance(info.filename, sop, info.file_size, digest))
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise TCIAIntegrityError(f"series {uid}: the zip is truncated or corrupt: {exc}") from exc
    if md5s:
        raise TCIAIntegrityError(
            f"series {uid}: {MD5_MEMBER} lists {len(md5s)} file(s) missing from the zip, "
            f"e.g. {next(iter(md5s))}"
        )
    instances.sort(key=lambda i: i.name)
    license_text = None
    if has_license:
        license_text = (folder / LICENSE_NAME).read_text(encoding="utf-8", errors="replace")
    return CachedSeries(uid, folder, tuple(instances), license_text)


def _read_md5s(zf: zipfile.ZipFile, uid: str) -> dict[str, str]:
    """``{file name: md5}`` from the zip's md5hashes.csv (``Filename,MD5Hash``)."""
    try:
        raw = zf.read(MD5_MEMBER)
    except KeyError:
        raise TCIAIntegrityError(
            f"series {uid}: the zip has no {MD5_MEMBER}, so its files cannot be verified"
        ) from None
    md5s = {}
    for row in csv.reader(io.StringIO(raw.decode("utf-8-sig", "replace"))):
        if len(row) < 2 or (row[0].strip().lower(), row[1].strip().lower()) == (
            "filename",
            "md5hash",
        ):
            continue
        md5s[row[0].strip()] = row[1].strip().lower()
    return md5s


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, uid: str) -> str:
    """Copy one member to ``target`` (flushed to disk) and return its MD5 (hex);
    TCIAIntegrityError when it holds other than its declared size."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with zf.open(info) as source, open(target, "xb") as sink:
        while chunk := source.read(_EXTRACT_CHUNK):
            size += len(chunk)
            digest.update(chunk)
            sink.write(chunk)
        sink.flush()
        os.fsync(sink.fileno())
    if size != info.file_size:
        raise TCIAIntegrityError(
            f"series {uid}: zip member {info.filename} holds {size} bytes, declares "
            f"{info.file_size}"
        )
    return digest.hexdigest()


def _has_dicom_prefix(path: Path) -> bool:
    """bool: the file starts with the 128-byte preamble and ``DICM`` (PS3.10 section 7.1)."""
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def _storage_error(uid: str, exc: OSError) -> TCIAStorageError:
    """A file-system failure (no space, name too long, another device) naming series and path."""
    where = exc.filename or "the cache or destination"
    reason = exc.strerror or str(exc)
    return TCIAStorageError(exc.errno or 0, f"series {uid}: {reason}: {where}")


def _sop_instance_uid(path: Path) -> str:
    """The (0008,0018) *SOP Instance UID* of a DICOM file ("" when it has none).

    The header is read only up to that element (a third of the cost of a full header read);
    files that this fast path cannot parse are read again leniently.
    """
    from pydicom.filereader import read_partial

    try:
        with open(path, "rb") as f:
            uid = read_partial(f, stop_when=_after_sop_instance_uid).get("SOPInstanceUID")
        if uid:
            return str(uid)
    except Exception:  # noqa: BLE001 - any oddity: take the lenient path below
        pass
    return _sop_instance_uid_leniently(path)


def _after_sop_instance_uid(tag: Any, vr: Any, length: int) -> bool:
    return tag > 0x00080018


def _sop_instance_uid_leniently(path: Path) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"], force=True
        )
        return str(ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID", ""))
    except Exception as exc:  # noqa: BLE001 - a file the archive holds but pydicom cannot read
        log.warning("%s: no SOPInstanceUID (%s)", path.name, exc)
        return ""


# -- many series into a folder layout -------------------------------------------------------------


@dataclass
class _Request:
    uid: str
    metadata: dict[str, Any]
    cached: CachedSeries | None = None
    path: Path | None = None
    problem: str | None = None  # why it cannot be placed (its folder), found before any fetch


def download(
    client: TCIAClient,
    series: Any,
    dest: str | os.PathLike[str],
    *,
    on_error: str = "raise",
    layout: str = DEFAULT_LAYOUT,
    workers: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Download series into ``dest`` (see :meth:`TCIAClient.download`)."""
    if on_error not in ("raise", "return"):
        raise ValueError(f"on_error must be 'raise' or 'return', not {on_error!r}")
    fields = _layout_fields(layout)
    workers = client.settings.workers if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, not {workers!r}")
    root = Path(dest).expanduser().resolve()
    requests = _requests(series)
    if not requests:
        if progress:
            print("nothing to download: the selection names no series", file=sys.stderr)
        return _results_table([])
    client.cache.clean_staging()  # what killed processes left behind

    for request in requests:
        request.cached = client.cache.get(request.uid)
        if request.cached is not None:
            request.metadata = {**request.cached.metadata, **request.metadata}
    _add_metadata(client, requests, fields - {"SeriesInstanceUID"})
    for request in requests:
        try:
            request.path = _series_folder(root, layout, request)
        except ValueError as exc:  # e.g. a symbolic link of the user's leads out: this series only
            request.problem = str(exc)
    _refuse_shared_folders(requests, layout)

    bar = _ProgressBar(progress, requests)
    # `workers` zips arrive at once; as many more threads check and extract those that arrived.
    slots = threading.Semaphore(workers)
    try:
        with ThreadPoolExecutor(max_workers=min(2 * workers, max(len(requests), 1))) as pool:
            futures = [pool.submit(_download_one, client, r, bar, slots) for r in requests]
            try:
                rows = [f.result() for f in futures]
            except BaseException:
                bar.cancel.set()
                pool.shutdown(cancel_futures=True)
                raise
    finally:
        bar.close()
    results = _results_table(rows)
    failed = results[results["status"] == "failed"]
    if len(failed) and on_error == "raise":
        lines = "\n".join(f"  {row.SeriesInstanceUID}: {row.error}" for row in failed.itertuples())
        raise DownloadError(
            f"{len(failed)} of {len(results)} series failed (table on .results):\n{lines}",
            results,
        )
    return results


def _results_table(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """The status table; ``path`` and ``error`` hold None (not NaN) where there is nothing."""
    columns = dict(zip(RESULT_COLUMNS, zip(*rows, strict=True), strict=True)) if rows else {}
    kinds = {"SeriesInstanceUID": "str", "status": "str", "path": object, "files": "int64",
             "bytes": "int64", "error": object}
    return pd.DataFrame(
        {name: pd.Series(list(columns.get(name, ())), dtype=kind) for name, kind in kinds.items()}
    )


def _download_one(
    client: TCIAClient, request: _Request, bar: _ProgressBar, slots: threading.Semaphore
) -> tuple[Any, ...]:
    """One status row: the series made complete in its folder, or the reason it failed."""
    if request.problem is not None or request.path is None:
        bar.finish(request.uid)
        return (request.uid, "failed", None, 0, 0, f"ValueError: {request.problem}")
    placed = read_series_folder(request.path, request.uid)
    if placed is not None:
        bar.finish(request.uid)
        return (request.uid, "cached", str(request.path), len(placed.instances), placed.bytes, None)
    received = [0]  # this attempt's bytes (a retry takes back what the failed one counted)

    def on_bytes(n: int) -> None:
        if n > 0 and bar.cancel.is_set():
            raise _Cancelled(f"series {request.uid}: download cancelled")
        received[0] += n
        bar.advance(request.uid, received[0])

    try:
        series = request.cached or backends.fetch_series(
            client, request.uid, metadata=request.metadata, progress=on_bytes, slots=slots
        )
        status = "cached" if request.cached is not None else "downloaded"
        with client.cache.lock(request.uid):
            try:
                _place(series, request.path)
            except OSError as exc:
                if isinstance(exc, TCIAError):
                    raise
                raise _storage_error(request.uid, exc) from exc
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row; the caller raises
        log.debug("series %s failed", request.uid, exc_info=True)
        bar.finish(request.uid)
        return (request.uid, "failed", None, 0, 0, f"{type(exc).__name__}: {exc}")
    bar.finish(request.uid)
    return (request.uid, status, str(request.path), len(series.instances), series.bytes, None)


def _refuse_shared_folders(requests: list[_Request], layout: str) -> None:
    """ValueError when the layout puts two series in one folder, or one inside another's
    (``x/{SeriesInstanceUID}/..``, or ``{PatientID}{SeriesInstanceUID}`` where '1' + '23.45' and
    '12' + '3.45' meet): the second would replace the first's files."""
    owner: dict[Path, str] = {}
    for request in requests:
        if request.path is None:
            continue
        other = owner.setdefault(request.path, request.uid)
        if other != request.uid:
            raise ValueError(
                f"layout {layout!r} puts series {other} and {request.uid} in one folder, "
                f"{request.path}; use a layout that ends in /{{SeriesInstanceUID}}"
            )
    for request in requests:
        for parent in request.path.parents if request.path is not None else ():
            if parent in owner:
                raise ValueError(
                    f"layout {layout!r} puts series {request.uid} inside the folder of series "
                    f"{owner[parent]} ({parent})"
                )


def _place(series: CachedSeries, folder: Path) -> None:
    """Copy (reflink where possible, never hard-link) a cached series' files into ``folder``;
    its record last. A file already there at its recorded size, and no link to the cache, stays.

    Call it with the series' lock held: temporaries left in ``folder`` by a run killed while
    placing are removed first.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _refuse_foreign_folder(series.series_uid, folder)
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    names = [i.name for i in series.instances]
    if series.license_text is not None:
        names.append(LICENSE_NAME)
    for name in names:
        source, target = series.path / name, folder / name
        with contextlib.suppress(OSError):
            if not os.path.samefile(source, target) and (
                target.stat().st_size == source.stat().st_size
            ):
                continue
        temporary = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            copy_file(source, temporary)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
    _write_record(folder, stamped(replace(series, path=folder)))


def _refuse_foreign_folder(series_uid: str, folder: Path) -> None:
    """ValueError when ``folder`` already holds another series (an earlier download whose
    layout gave the same folder): its files are not replaced."""
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
        holder = record["series_uid"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if holder != series_uid:
        raise ValueError(f"{folder} already holds series {holder}; series {series_uid} not placed")


def _requests(series: Any) -> list[_Request]:
    """The series asked for, each once, with what a DataFrame says about them; ValueError
    naming every malformed UID."""
    uids = series_uid_values(series)
    metadata: dict[str, dict[str, Any]] = {}
    if isinstance(series, pd.DataFrame):
        keep = [c for c in series.columns if c in LAYOUT_FIELDS]
        for uid, row in zip(uids, series[keep].to_dict("records"), strict=True):
            if isinstance(uid, str):
                metadata.setdefault(uid.strip(), {k: _plain(v) for k, v in row.items()})
    good, bad = [], []
    for uid in uids:
        try:
            good.append(validate_uid(uid, "SeriesInstanceUID"))
        except (TypeError, ValueError):
            bad.append(uid)
    if bad:
        raise ValueError(f"not DICOM UIDs ({len(bad)}): {', '.join(map(repr, bad[:20]))}")
    good = list(dict.fromkeys(good))
    return [
        _Request(uid, {k: v for k, v in metadata.get(uid, {}).items() if v is not None})
        for uid in good
    ]


def _layout_fields(layout: str) -> set[str]:
    """The fields of a layout template; ValueError for an unknown field or a format spec."""
    if not isinstance(layout, str) or not layout.strip():
        raise ValueError(f"layout must be a non-empty template string, not {layout!r}")
    try:
        parsed = list(string.Formatter().parse(layout))
    except ValueError as exc:
        raise ValueError(f"layout {layout!r} is not a valid template: {exc}") from None
    fields = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in LAYOUT_FIELDS or spec or conversion:
            raise ValueError(
                f"layout field {{{name}}} is not allowed; use plain fields among "
                f"{sorted(LAYOUT_FIELDS)}"
            )
        fields.add(name)
    if "SeriesInstanceUID" not in fields:
        raise ValueError(f"layout {layout!r} must contain {{SeriesInstanceUID}}")
    return fields


def _add_metadata(client: TCIAClient, requests: list[_Request], fields: set[str]) -> None:
    """Fill the layout fields missing from what was given or cached, in as few requests as
    possible (getSeriesMetadata, thousands of UIDs per request)."""
    lacking = [r for r in requests if not fields <= r.metadata.keys()]
    if not lacking:
        return
    found = client.series_metadata([r.uid for r in lacking])
    by_uid = {row["SeriesInstanceUID"]: row for row in found.to_dict("records")}
    for request in lacking:
        row = by_uid.get(request.uid, {})
        for name in LAYOUT_FIELDS & row.keys():
            value = _plain(row[name])
            if value is not None:
                request.metadata.setdefault(name, value)


def _field_text(value: Any) -> str:
    """A metadata value as a safe folder name part (no separators, no leading dots, no name
    Windows reserves: ``CON`` becomes ``_CON``)."""
    if value is None:
        return "unknown"
    if isinstance(value, pd.Timestamp):
        value = value.strftime("%Y-%m-%d")
    text = _UNSAFE_CHARACTERS.sub("_", str(value).strip()).lstrip(".")[:128]
    return "_" + text if is_reserved_name(text) else text or "_"


def _series_folder(root: Path, layout: str, request: _Request) -> Path:
    """Where a series goes under ``root``, asserted to stay inside it."""
    values = {name: _field_text(request.metadata.get(name)) for name in LAYOUT_FIELDS}
    values["SeriesInstanceUID"] = request.uid
    folder = (root / layout.format(**values)).resolve()
    if folder == root or root not in folder.parents:
        raise ValueError(f"series {request.uid}: layout {layout!r} gives {folder}, outside {root}")
    return folder


class _ProgressBar:
    """A thread-safe tqdm byte bar over the series that need a transfer; ``cancel`` stops workers.

    The bar appears with the first byte received (none for an empty selection, a fully cached
    one, or one that fails before any transfer) and only moves forward: each series advances by
    what arrived for it, at most to its expected size (FileSize), and to that size when it is
    done or has failed; bytes a retry fetches again are not counted twice.
    """

    def __init__(self, enabled: bool, requests: list[_Request]) -> None:
        self.cancel = threading.Event()
        self._enabled = enabled
        self._lock = threading.Lock()
        self._bar: Any = None
        todo = [r for r in requests if r.cached is None]
        self._expected = {r.uid: _plain(r.metadata.get("FileSize")) for r in todo}
        sizes = list(self._expected.values())
        self._total = sum(int(s) for s in sizes) if None not in sizes else None
        self._shown: dict[str, int] = dict.fromkeys(self._expected, 0)

    def advance(self, uid: str, received: int) -> None:
        """``received`` bytes of ``uid`` have arrived in its current attempt."""
        expected = self._expected.get(uid)
        self._show(uid, min(received, int(expected)) if expected is not None else received)

    def finish(self, uid: str) -> None:
        """``uid`` is done (or failed): count all of it."""
        if uid in self._expected:
            expected = self._expected[uid]
            self._show(uid, int(expected) if expected is not None else self._shown[uid])

    def _show(self, uid: str, target: int) -> None:
        with self._lock:
            step = target - self._shown.get(uid, target)
            if step <= 0 or not self._enabled:
                return
            self._shown[uid] = target
            if self._bar is None:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=self._total, unit="B", unit_scale=True,
                                 unit_divisor=1024, desc="series")
            self._bar.update(step)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()


# -- reading --------------------------------------------------------------------------------------


def read_series(
    client: TCIAClient, series_uid: str, *, collection: str | None = None
) -> list[pydicom.Dataset]:
    """The datasets of a series (fetched into the cache if needed), sorted along the normal."""
    import pydicom

    from .volume import sort_slices_by_position

    series = backends.fetch_series(client, series_uid, collection=collection)
    return sort_slices_by_position(pydicom.dcmread(path) for path in series.files)

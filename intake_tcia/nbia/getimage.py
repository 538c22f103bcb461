"""Fetching one series from NBIA: its getImage zip unpacked into the cache while it arrives.

:func:`fetch_series` takes the series' lock, streams the zip (``IncludeMD5=Yes``) and hands each
member to a :class:`~intake_tcia.retrieval.pipeline.SeriesWriter` as soon as its header is in
(:func:`intake_tcia.nbia.members.iter_members`): checked, inflated, hashed and written to staging
while the next bytes are still on the wire. ``md5hashes.csv``, which comes last, is compared with
the hashes already computed; only then is the series published. Lost connections, truncated
zips and wrong MD5s are retried on one :class:`~intake_tcia.retrieval.transport.RetryBudget`
with the statuses of the requests themselves, within ``series_timeout``; unsafe zips are not.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .._validate import validate_uid
from ..config import Settings
from ..errors import TCIAConnectionError, TCIAResponseError, UnsafeArchiveError, storage_errors
from ..retrieval.cache import CachedSeries, SeriesCache
from ..retrieval.layouts import LAYOUT_FIELDS, plain
from ..retrieval.pipeline import MD5_MEMBER, SeriesFolder, SeriesWriter
from ..retrieval.progress import Counter, Progress, ignore
from ..retrieval.transport import RetryBudget, Transport
from .members import iter_members

__all__ = ["fetch_series", "extract_series", "write_zip"]

T = TypeVar("T")


class _Hosts(Protocol):
    """What a getImage download uses of :class:`~intake_tcia.nbia.backend.NBIABackend`."""

    settings: Settings
    transport: Transport
    cache: SeriesCache

    def remember_collection(self, uid: str, collection: str) -> None: ...

    def on_series_host(self, series_uid: str, call: Callable[[str], T]) -> T: ...

    def series_size(self, series_uid: str) -> dict[str, int]: ...

#: Bytes asked of the connection at once: small, as many series may be arriving at once.
_STREAM_CHUNK = 1 << 18
#: A zip may hold this much more than getSeriesSize promised (LICENSE, md5hashes.csv, drift).
_SIZE_TOLERANCE = 0.5
_SIZE_SLACK = 1 << 20
_MD5_TABLE_LIMIT = 16 << 20


def fetch_series(
    nbia: _Hosts,
    series_uid: str,
    *,
    collection: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> CachedSeries:
    """A series from the cache, else downloaded once, verified and published to the cache.

    A per-series file lock makes threads and processes that want the same series wait for
    the one that downloads it. Truncated zips, MD5 mismatches, lost connections and retryable
    statuses share ``nbia.settings.retries`` retries with exponential backoff; nothing
    partial is ever left in the cache.

    Parameters
    ----------
    nbia : NBIABackend
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
    cache = nbia.cache
    found = cache.get(uid)
    if found is not None:
        return found
    metadata = {k: plain(v) for k, v in (metadata or {}).items()}
    collection = collection or metadata.get("Collection")
    if collection:
        nbia.remember_collection(uid, collection)
    with storage_errors(uid, cache.root), cache.lock(uid):
        found = cache.get(uid)  # another thread or process may have fetched it meanwhile
        if found is not None:
            return found
        limit, count = _size_limit(nbia, uid, metadata)
        keep = {k: v for k, v in metadata.items() if k in LAYOUT_FIELDS}
        budget = nbia.transport.budget()  # statuses, resets and bad zips alike
        deadline = time.monotonic() + nbia.settings.series_timeout  # retries included
        counter = Counter(progress or ignore)

        def attempt() -> CachedSeries:
            counter.take_back()  # what a failed attempt counted
            with SeriesWriter(
                cache, uid, expected_count=count, size_limit=limit, metadata=keep
            ) as writer:
                nbia.on_series_host(
                    uid,
                    lambda host: _receive(nbia, host, writer, limit, counter, budget, deadline),
                )
                return writer.publish()

        try:
            return budget.run(attempt, deadline=deadline)
        except BaseException:
            counter.take_back()
            raise


def _receive(
    nbia: _Hosts,
    host: str,
    writer: SeriesWriter,
    limit: int,
    progress: Progress,
    budget: RetryBudget,
    deadline: float,
) -> None:
    """Stream one getImage zip from ``host`` into ``writer``; ``limit`` is the most bytes it may
    hold, ``deadline`` (monotonic seconds) when it must have arrived."""
    params = {"SeriesInstanceUID": writer.series_uid, "NewFileNames": "Yes", "IncludeMD5": "Yes"}
    transport = nbia.transport
    with transport.stream(host + "getImage", params, budget=budget) as response:
        body = transport.iter_body(response, _STREAM_CHUNK, deadline=deadline)
        timeout = nbia.settings.series_timeout
        write_zip(writer, _watched(body, writer.series_uid, limit, progress, timeout), limit=limit)


def _watched(
    chunks: Iterable[bytes], uid: str, limit: int, progress: Progress, timeout: float
) -> Iterator[bytes]:
    """The zip's bytes, counted, bounded by ``limit``, with errors that name the series."""
    size = 0
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise UnsafeArchiveError(
                    f"series {uid}: the zip is over {limit} bytes, far more than the series' "
                    "size; refusing it"
                )
            progress(len(chunk))
            yield chunk
    except TCIAConnectionError as exc:
        raise TCIAConnectionError(f"series {uid}: {exc}") from exc
    except TCIAResponseError as exc:  # the deadline passed
        raise TCIAResponseError(
            f"series {uid}: not received within series_timeout ({timeout:g} s): {exc}"
        ) from exc


def write_zip(target: SeriesFolder, chunks: Iterable[bytes], *, limit: int | None) -> None:
    """Write the members of an NBIA series zip into ``target`` as they arrive.

    ``md5hashes.csv`` gives the expected MD5s; ``LICENSE`` and the DICOM files become files.
    Returns once the zip's central directory has been read and checked; ``target`` is then
    ready to be completed. Raises as :func:`~intake_tcia.nbia.members.iter_members` and
    :meth:`~intake_tcia.retrieval.pipeline.SeriesFolder.add` do.
    """
    for member in iter_members(chunks, target.series_uid, limit=limit):
        if member.name == MD5_MEMBER:
            target.expect_md5s(_md5_table(member.chunks, target.series_uid))
        else:
            target.add(member.name, member.chunks)


def _md5_table(chunks: Iterable[bytes], uid: str) -> dict[str, str]:
    """``{file name: md5}`` from md5hashes.csv (``Filename,MD5Hash``)."""
    raw = bytearray()
    for chunk in chunks:
        raw += chunk
        if len(raw) > _MD5_TABLE_LIMIT:
            raise UnsafeArchiveError(f"series {uid}: {MD5_MEMBER} is over {_MD5_TABLE_LIMIT} bytes")
    md5s = {}
    for row in csv.reader(io.StringIO(raw.decode("utf-8-sig", "replace"))):
        if len(row) < 2 or (row[0].strip().lower(), row[1].strip().lower()) == (
            "filename",
            "md5hash",
        ):
            continue
        md5s[row[0].strip()] = row[1].strip().lower()
    return md5s


def extract_series(
    zip_path: Path, folder: Path, uid: str, *, limit: int, max_files: int | None = None
) -> CachedSeries:
    """Check a series zip already on disk, extract it into ``folder`` and verify every file.

    Parameters
    ----------
    zip_path : Path
        The zip (getImage with ``IncludeMD5=Yes``, or getImageWithMD5Hash).
    folder : Path
        Where the files go; must not exist yet.
    uid : str
        The series (named in errors).
    limit : int
        The most uncompressed bytes the zip may hold.
    max_files : int, optional
        The number of DICOM files it must hold (getSeriesSize's ObjectCount).

    Returns
    -------
    CachedSeries
        The series in ``folder`` (files flushed to disk; no record written yet).

    Raises
    ------
    UnsafeArchiveError, TCIAIntegrityError
        As :func:`write_zip` and :meth:`~intake_tcia.retrieval.pipeline.SeriesFolder.complete`.
    """
    target = SeriesFolder(folder, uid, expected_count=max_files, size_limit=limit)
    with open(zip_path, "rb") as f:
        write_zip(target, iter(lambda: f.read(_STREAM_CHUNK), b""), limit=limit)
    return target.complete()


def _size_limit(nbia: _Hosts, uid: str, metadata: Mapping[str, Any]) -> tuple[int, int]:
    """The most bytes a series' zip may hold (getSeriesSize's promise plus a tolerance), and
    the number of DICOM files it promises."""
    size, count = metadata.get("FileSize"), metadata.get("ImageCount")
    if size is None or count is None:
        promised = nbia.series_size(uid)
        size, count = promised["TotalSizeInBytes"], promised["ObjectCount"]
    return int(int(size) * (1 + _SIZE_TOLERANCE)) + _SIZE_SLACK + 256 * int(count), int(count)

"""IDC retrieval: a series' instances from the Imaging Data Commons bucket, object by object.

IDC keeps each instance as its own object, ``s3://<aws_bucket>/<crdc_series_uuid>/<uuid>.dcm``
(design.md, "Two backends"). Everything here goes through the package's one transport
(:mod:`intake_tcia.retrieval.transport`), anonymously, path style on ``settings.idc_url``:

* :func:`list_objects` (:mod:`intake_tcia.idc.listing`): ListObjectsV2 of the series' prefix,
  bounded, parsed as it streams.
* :func:`fetch_series`: every object GET in parallel on pooled connections, all within one
  :class:`~intake_tcia.retrieval.transport.RetryBudget` and the series' deadline
  (``read_timeout`` plus its listed bytes at ``min_transfer_rate``); the index must vouch for
  the series (an ``instanceCount`` above 0, a ``series_size_MB``), the object count must be
  that count, the listed bytes at most ``idc_size_factor`` times that size, each body its
  listed size and, where the ETag is a plain MD5, that MD5; each file a complete DICOM
  instance of the series and study, each instance once. The files are written, verified and
  published into the series cache by :class:`~intake_tcia.retrieval.pipeline.SeriesWriter`,
  the same cache NBIA downloads go to. Every error names the series, and the object at fault.
* :func:`instances`: the SOPInstanceUID of every object, from ranged reads of the first bytes
  of each (kept in ``{cache_dir}/idc/{SeriesInstanceUID}.json``, so a series is listed once);
  a header read grows to at most ``max_header_bytes``.
* :func:`read_instance` and :func:`read_header`: one instance's bytes (one GET, verified), or
  one header (a ranged read) of a series that is not in the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from .._validate import validate_uid
from ..config import Settings
from ..errors import (
    TCIAError,
    TCIAIntegrityError,
    TCIANotFoundError,
    TCIAResponseError,
    in_series,
    storage_errors,
)
from ..retrieval.cache import CachedSeries, SeriesCache, atomic_path
from ..retrieval.dicomhead import check_instance, sop_from_head
from ..retrieval.pipeline import import_readers
from ..retrieval.progress import Counter, ignore
from ..retrieval.transport import Transport
from .listing import IDCObject, list_objects
from .location import IDCLocation, locate, locations

if TYPE_CHECKING:
    import pydicom

    from ..retrieval.transport import RetryBudget

__all__ = [
    "IDCLocation",
    "IDCObject",
    "locate",
    "locations",
    "list_objects",
    "instances",
    "fetch_series",
    "header_from_head",
    "object_problem",
    "object_url",
    "read_head",
    "read_instance",
    "read_object",
    "read_header",
    "tag_rows",
]

log = logging.getLogger("intake_tcia")

#: Where the listing and instance UIDs of IDC series are kept, under the cache directory.
LISTINGS_DIR = "idc"
#: Bytes of an object read first for its header; grown (x16) until the header is in them.
_HEAD_BYTES = 16 * 1024
_GET_CHUNK = 1 << 18
#: Bytes a series may hold beyond idc_size_factor x series_size_MB (the index rounds sizes).
_SIZE_SLACK = 64 << 10
_LISTING_VERSION = 1
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) in little-endian byte order


class _Bucket(Protocol):
    """What these functions use of :class:`~intake_tcia.idc.backend.IDCBackend`."""

    settings: Settings
    transport: Transport
    cache: SeriesCache
    cache_dir: Path

    def location(self, series_uid: str) -> IDCLocation: ...


def object_url(idc: _Bucket, bucket: str, key: str) -> str:
    """The URL of an object on the client's IDC endpoint."""
    return f"{idc.settings.idc_url}{quote(bucket)}/{quote(key)}"


def read_object(idc: _Bucket, url: str, params: dict[str, str] | None,
                budget: RetryBudget, headers: dict[str, str] | None = None,
                limit: int | None = None) -> bytearray:
    """A whole (small) answer: at most ``limit`` (else ``max_answer_bytes``) bytes, within
    ``query_timeout``; a body cut off is asked again on ``budget``."""
    transport = idc.transport
    limit = idc.settings.max_answer_bytes if limit is None else limit

    def attempt() -> bytearray:
        deadline = time.monotonic() + idc.settings.query_timeout
        data = bytearray()
        with transport.stream(url, params, budget=budget, headers=headers) as response:
            for chunk in transport.iter_body(response, deadline=deadline):
                data += chunk
                if len(data) > limit:
                    raise TCIAResponseError(f"{url} sent more than {limit} bytes; giving up")
        return data

    return budget.run(attempt)


# -- instance UIDs from ranged header reads -------------------------------------------------------


def _listing_path(idc: _Bucket, series_uid: str) -> Path:
    release = idc.settings.idc_version  # listings of an older release are kept apart
    folder = idc.cache_dir / LISTINGS_DIR
    return (folder / f"v{release}" if release else folder) / f"{series_uid}.json"


def _saved_listing(idc: _Bucket, series_uid: str) -> tuple[IDCLocation, list[IDCObject]]:
    """The listing kept by :func:`instances`; FileNotFoundError or ValueError if none."""
    record = json.loads(_listing_path(idc, series_uid).read_text(encoding="utf-8"))
    if record.get("version") != _LISTING_VERSION or record.get("series_uid") != series_uid:
        raise ValueError("another listing")
    where = IDCLocation(**record["location"])
    return where, [IDCObject(**item) for item in record["objects"]]


def _save_listing(idc: _Bucket, where: IDCLocation, objects: list[IDCObject]) -> None:
    path = _listing_path(idc, where.series_uid)
    record = {"version": _LISTING_VERSION, "series_uid": where.series_uid,
              "location": asdict(where), "objects": [asdict(o) for o in objects]}
    with storage_errors(where.series_uid):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(record), encoding="utf-8")


def instances(idc: _Bucket, series_uid: str) -> list[IDCObject]:
    """A series' objects with the SOPInstanceUID of each, read from its first bytes.

    Each object's head is read with one ranged GET (in parallel); the answer is kept on disk,
    so later calls, in any process sharing the cache, make no request.
    """
    return _listing(idc, validate_uid(series_uid, "series_uid"))[1]


def _listing(idc: _Bucket, uid: str) -> tuple[IDCLocation, list[IDCObject]]:
    """The kept listing of a series (see :func:`instances`), made first if there is none."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return _saved_listing(idc, uid)

    where = idc.location(uid)
    budget = idc.transport.budget()
    objects = list_objects(idc, where, budget=budget)
    import_readers()  # before the threads parse heads

    def read(obj: IDCObject) -> IDCObject:
        head = read_head(idc, where, obj, budget, sop_from_head)
        return IDCObject(obj.key, obj.size, obj.md5, head)

    with ThreadPoolExecutor(max(1, min(idc.settings.workers, len(objects)))) as pool:
        read_objects = list(pool.map(read, objects))
    _save_listing(idc, where, read_objects)
    return where, read_objects


def read_head(idc: _Bucket, where: IDCLocation, obj: IDCObject, budget: RetryBudget,
              parse: Callable[[bytes, bool], Any]) -> Any:
    """``parse(first bytes, whole)`` of an object, reading more (x16) until it can, at most
    ``max_header_bytes``; errors name the series and the object."""
    cap = idc.settings.max_header_bytes
    want = min(_HEAD_BYTES, cap)
    try:
        while True:
            whole = want >= obj.size
            headers = None if whole else {"Range": f"bytes=0-{want - 1}"}
            data = read_object(idc, object_url(idc, where.bucket, obj.key), None, budget,
                             headers, limit=obj.size if whole else want)
            if len(data) >= 134 and data[128:134] != b"DICM\x02\x00":  # file meta next
                raise TCIAIntegrityError("is not DICOM (no DICM prefix and file meta)",
                                         retryable=False)
            result = parse(bytes(data), whole or len(data) >= obj.size)
            if result is not None:
                return result
            if whole:
                raise TCIAIntegrityError("is not a DICOM instance", retryable=False)
            if want >= cap:
                raise TCIAIntegrityError(
                    f"holds no DICOM header within its first {cap} bytes (max_header_bytes)",
                    retryable=False)
            want = min(want * 16, cap)
    except TCIAError as exc:
        raise in_series(exc, where.series_uid, obj.key) from exc


def header_from_head(data: bytes, whole: bool) -> pydicom.Dataset | None:
    """The header (all before the pixel data) in the first bytes of a file, or None."""
    import pydicom

    at = data.find(PIXEL_DATA_TAG, 132)
    if at < 0 and not whole:
        return None
    try:
        return pydicom.dcmread(BytesIO(data if at < 0 else data[:at]), stop_before_pixels=True)
    except Exception:  # noqa: BLE001
        return None


def tag_rows(ds: pydicom.Dataset) -> list[dict[str, str | None]]:
    """getDicomTags rows of a header: element ``(GGGG,EEEE)`` (items' elements prefixed
    ``>``), name, data; binary and private elements left out, as NBIA does."""
    rows: list[dict[str, str | None]] = []

    def walk(items: pydicom.Dataset, depth: int) -> None:
        for elem in items:
            if elem.VR in ("OB", "OW", "OF", "OD", "OL", "UN") or elem.tag.is_private:
                continue
            row = {"element": f"{'>' * depth}({elem.tag.group:04X},{elem.tag.element:04X})",
                   "name": elem.name, "data": None}
            rows.append(row)
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item, depth + 1)
            elif elem.VM > 1:
                row["data"] = "\\".join(str(v) for v in elem.value)
            else:
                row["data"] = str(elem.value)

    walk(ds, 0)
    return rows


def _object_of(idc: _Bucket, series_uid: str, sop_uid: str) -> tuple[IDCLocation, IDCObject]:
    where, listing = _listing(idc, series_uid)
    for obj in listing:
        if obj.sop_instance_uid == sop_uid:
            return where, obj
    raise TCIANotFoundError(404, f"series {series_uid} has no instance {sop_uid} in IDC",
                            f"s3://{where.bucket}/{where.prefix}")


def read_instance(idc: _Bucket, series_uid: str, sop_instance_uid: str) -> bytes:
    """One instance's bytes (one GET), checked: listed size, MD5 = ETag, its SOPInstanceUID.

    Uses the listing :func:`instances` keeps (made first if there is none).
    """
    series_uid = validate_uid(series_uid, "series_uid")
    sop_uid = validate_uid(sop_instance_uid, "sop_instance_uid")
    where, obj = _object_of(idc, series_uid, sop_uid)
    budget = idc.transport.budget()
    url = object_url(idc, where.bucket, obj.key)

    def attempt() -> bytes:
        data = bytes(read_object(idc, url, None, budget, limit=obj.size))
        problem = object_problem(data, obj)
        if problem is not None:
            raise TCIAIntegrityError(problem)
        found = check_instance(data, len(data), lambda at, n: data[at : at + n])
        if found is not None and found.problem is not None:
            raise TCIAIntegrityError(found.problem, retryable=False)
        if sop_from_head(data, True) != sop_uid:
            raise TCIAIntegrityError(f"does not hold instance {sop_uid}", retryable=False)
        return data

    try:
        return budget.run(attempt)
    except TCIAError as exc:
        raise in_series(exc, series_uid, obj.key) from exc


def object_problem(data: bytes, obj: IDCObject) -> str | None:
    """Why ``data`` is not the listed object (its size, else its MD5), or None."""
    if len(data) != obj.size:
        return f"{len(data)} bytes received, {obj.size} listed"
    if obj.md5 is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() != obj.md5:
        return "MD5 differs from its ETag"
    return None


def read_header(idc: _Bucket, series_uid: str) -> pydicom.Dataset:
    """The header (no pixel data) of one instance of a series: one small listing, one ranged
    read; nothing else."""
    series_uid = validate_uid(series_uid, "series_uid")
    try:
        where, listing = _saved_listing(idc, series_uid)
    except (OSError, ValueError, KeyError, TypeError):
        where = idc.location(series_uid)
        listing = list_objects(idc, where, max_keys=1)
    if not listing:
        raise TCIANotFoundError(404, f"IDC holds no objects of series {series_uid}",
                                f"s3://{where.bucket}/{where.prefix}")
    return read_head(idc, where, listing[0], idc.transport.budget(), header_from_head)


# -- whole series ---------------------------------------------------------------------------------


def fetch_series(
    idc: _Bucket,
    where: IDCLocation,
    *,
    metadata: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    slots: threading.Semaphore | None = None,
) -> CachedSeries:
    """A series from the cache, else fetched from IDC, verified and published to the cache.

    Parameters
    ----------
    idc : IDCBackend
        Its cache, transport (pooled connections), retries and ``series_timeout``.
    where : IDCLocation
        The series (from :func:`locate`).
    metadata : mapping, optional
        Series metadata kept in the cache record.
    progress : callable, optional
        Called with bytes received (negative to take back a failed attempt's).
    slots : threading.Semaphore, optional
        Held during each GET, to bound the connections of several series together
        (default: ``settings.workers`` GETs at once for this series).

    Raises
    ------
    TCIAIntegrityError
        The index cannot vouch for the series (``instanceCount`` null or 0, a bad value), the
        bucket lists another number of objects than the index, or more bytes than
        ``idc_size_factor`` times ``series_size_MB``, or an object stays different from its
        listing (size, MD5) or is no complete instance of this series.
    TCIAConnectionError, TCIAHTTPError
        The retries were spent.
    """
    from ..retrieval.pipeline import SeriesWriter

    uid = where.series_uid
    cache = idc.cache
    found = cache.get(uid)
    if found is not None:
        return found
    with cache.lock(uid):
        found = cache.get(uid)
        if found is not None:
            return found
        count, size_mb = where.vouched()
        settings = idc.settings
        budget = idc.transport.budget()  # statuses, lost bodies and bad objects alike
        objects = list_objects(idc, where, budget=budget)
        if count is not None and len(objects) != count:  # None: an older release's copy
            raise TCIAIntegrityError(
                f"series {uid}: the bucket lists {len(objects)} objects under "
                f"s3://{where.bucket}/{where.prefix}, the IDC index says {count}")
        total = sum(o.size for o in objects)
        bound = settings.idc_size_factor * size_mb * 1e6 + _SIZE_SLACK
        if total > bound:
            raise TCIAIntegrityError(
                f"series {uid}: the bucket lists {total} bytes under "
                f"s3://{where.bucket}/{where.prefix}, over {bound:.0f} (idc_size_factor "
                f"{settings.idc_size_factor:g} x the index's series_size_MB {size_mb:g}, plus "
                f"{_SIZE_SLACK} bytes)", retryable=False)
        deadline = time.monotonic() + min(  # retries included; a trickle cannot hold for hours
            settings.series_timeout, settings.read_timeout + total / settings.min_transfer_rate)
        slots = slots or threading.Semaphore(idc.settings.workers)
        counter = Counter(progress or ignore)
        lock = threading.Lock()

        def count(n: int) -> None:
            with lock:
                counter(n)

        def attempt() -> CachedSeries:
            counter.take_back()  # what a failed attempt counted
            with SeriesWriter(cache, uid, expected_count=len(objects), size_limit=total,
                              metadata=dict(metadata or {}), study_uid=where.study_uid,
                              promised_by="the IDC index's instanceCount") as writer:
                _run_all(lambda obj: _get_into(idc, where.bucket, obj, writer, budget,
                                               deadline, slots, count),
                         objects, idc.settings.workers)
                return writer.publish()

        try:
            return budget.run(attempt, deadline=deadline)
        except BaseException:
            counter.take_back()
            raise


def _run_all(call: Callable[[IDCObject], None], objects: list[IDCObject], workers: int) -> None:
    """``call`` on every object in a pool of threads; the first failure stops the rest."""
    if not objects:
        return
    stop = threading.Event()

    def guarded(obj: IDCObject) -> None:
        if not stop.is_set():
            call(obj)

    with ThreadPoolExecutor(max(1, min(workers, len(objects)))) as pool:
        futures = [pool.submit(guarded, obj) for obj in objects]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            stop.set()
            for future in futures:
                future.cancel()
    if failed:
        raise failed[0].exception()  # type: ignore[misc]


def _get_into(idc: _Bucket, bucket: str, obj: IDCObject, writer: Any,
              budget: RetryBudget, deadline: float, slots: threading.Semaphore,
              progress: Callable[[int], None]) -> None:
    """GET one object into the writer: its listed size, its ETag as the expected MD5.

    The slot and the connection are given back as soon as the last byte is in, before the
    writer checks the file, so the next GET starts meanwhile.
    """
    transport = idc.transport
    url = object_url(idc, bucket, obj.key)
    with contextlib.ExitStack() as held:
        held.enter_context(slots)
        try:
            response = held.enter_context(transport.stream(url, budget=budget))
            chunks = transport.iter_body(response, _GET_CHUNK, deadline=deadline)
            md5 = writer.add(obj.name, _counted(chunks, obj, progress, held.close),
                             expected_md5=obj.md5)
            if obj.md5 is None:  # a multipart ETag is no MD5: the size and the header are checked
                writer.expect_md5s({obj.name: md5})
        except TCIAError as exc:
            raise in_series(exc, writer.series_uid, obj.key) from exc


def _counted(chunks: Iterable[bytes], obj: IDCObject, progress: Callable[[int], None],
             done: Callable[[], None]) -> Iterator[bytes]:
    """``chunks``, counted into ``progress``, then ``done()``; TCIAIntegrityError when they are
    not the object's listed size."""
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > obj.size:
            raise TCIAIntegrityError(f"more than the {obj.size} bytes listed")
        progress(len(chunk))
        yield chunk
    if received != obj.size:
        raise TCIAIntegrityError(f"{received} bytes received, {obj.size} listed")
    done()

"""Many series into a folder layout: what the cache lacks is fetched, then placed into ``dest``.

:func:`download` fetches the series the cache lacks on a bounded pool of threads (each one
series at a time, through the :class:`SeriesSource` it is given: streamed, checked, verified and
published while it arrives), then fills a folder layout under ``dest`` from the cache without
writing the bytes again (reflinks where the file system has them, else hard links, which the
cache's records watch: :func:`intake_tcia.retrieval.files.place_file`), and returns one status
row per series. It knows no backend: the client hands it its router.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from .._lazy import is_instance
from .._lazy import pandas as pd
from .._validate import validate_uid
from ..config import Settings
from ..errors import DownloadError, TCIAError, storage_errors
from ..manifest import series_uid_values
from .cache import (
    LICENSE_NAME,
    RECORD_NAME,
    CachedSeries,
    SeriesCache,
    read_series_folder,
    stamped,
)
from .cache import write_record as _write_record
from .files import atomic_path, place_file
from .layouts import (
    DEFAULT_LAYOUT,
    LAYOUT_FIELDS,
    layout_fields,
    plain,
    series_folder,
    whole_number,
)
from .progress import Progress, ProgressBar

__all__ = ["download", "series_requests", "SeriesRequest", "SeriesSource", "RESULT_COLUMNS"]

log = logging.getLogger("intake_tcia")

#: The columns of the table :func:`download` returns.
RESULT_COLUMNS = ("SeriesInstanceUID", "status", "path", "files", "bytes", "error")


class SeriesSource(Protocol):
    """What :func:`download` needs of whoever serves series (the client's router)."""

    settings: Settings
    cache: SeriesCache

    def series_records(self, series_uids: list[str]) -> list[dict[str, Any]]:
        """getSeriesMetadata rows of these series, one dict a series (values typed or text)."""
        ...

    def prepare(self, series_uids: Iterable[str]) -> None:
        """Look up many series at once before they are fetched one by one."""
        ...

    def fetch_series(
        self,
        series_uid: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
        slots: threading.Semaphore | None = None,
    ) -> CachedSeries:
        """A series from the cache, else fetched, verified and published there."""
        ...


class _Cancelled(Exception):
    """The download was interrupted (Ctrl-C in the thread that waits for the workers)."""


# -- many series into a folder layout -------------------------------------------------------------


@dataclass
class SeriesRequest:
    """One series asked for: its UID, the metadata known of it, and what placing it needs."""

    uid: str
    metadata: dict[str, Any]
    cached: CachedSeries | None = None
    path: Path | None = None
    problem: str | None = None  # why it cannot be placed (its folder), found before any fetch


def download(
    source: SeriesSource,
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
    fields = layout_fields(layout)
    workers = source.settings.workers if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, not {workers!r}")
    root = Path(dest).expanduser().resolve()
    _check_dest(root)
    requests = series_requests(series)
    if not requests:
        if progress:
            print("nothing to download: the selection names no series", file=sys.stderr)
        return _results_table([])
    source.cache.clean_staging()  # what killed processes left behind

    for request in requests:
        request.cached = source.cache.get(request.uid)
        if request.cached is not None:
            request.metadata = {**request.cached.metadata, **request.metadata}
    try:
        _add_metadata(source, requests, fields - {"SeriesInstanceUID"})
    except TCIAError as exc:  # no metadata, no folder: each series lacking it fails
        if on_error == "raise":
            raise
        for request in requests:
            if not fields - {"SeriesInstanceUID"} <= request.metadata.keys():
                request.problem = f"{type(exc).__name__}: {exc}"
    for request in requests:
        if request.problem is not None:
            continue
        try:
            request.path = series_folder(root, layout, request.uid, request.metadata)
        except ValueError as exc:  # e.g. a symbolic link of the user's leads out: this series only
            request.problem = f"ValueError: {exc}"
    _refuse_shared_folders(requests, layout)
    source.prepare([r.uid for r in requests if r.cached is None])  # e.g. one index scan

    bar = ProgressBar(progress, {r.uid: plain(r.metadata.get("FileSize")) for r in requests
                                     if r.cached is None})
    # `workers` zips arrive at once, each unpacked as it arrives; or, from IDC, `workers`
    # objects at once in all, whatever their series
    slots = threading.Semaphore(workers)
    try:
        with ThreadPoolExecutor(max_workers=min(workers, len(requests))) as pool:
            futures = [pool.submit(_download_one, source, r, bar, slots) for r in requests]
            import pandas  # noqa: F401 - for the result table, while the series arrive
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


def _check_dest(root: Path) -> None:
    """NotADirectoryError, once, when ``root`` or the nearest existing folder above it is a
    file: every series would fail on it."""
    there = next(p for p in (root, *root.parents) if p.exists())
    if not there.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "the download destination is not a folder "
                                 f"({there} is a file)", str(root))


def _results_table(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """The status table; ``path`` and ``error`` hold None (not NaN) where there is nothing."""
    columns = dict(zip(RESULT_COLUMNS, zip(*rows, strict=True), strict=True)) if rows else {}
    kinds = {"SeriesInstanceUID": "str", "status": "str", "path": object, "files": "int64",
             "bytes": "int64", "error": object}
    return pd.DataFrame(
        {name: pd.Series(list(columns.get(name, ())), dtype=kind) for name, kind in kinds.items()}
    )


def _download_one(
    source: SeriesSource, request: SeriesRequest, bar: ProgressBar, slots: threading.Semaphore
) -> tuple[Any, ...]:
    """One status row: the series made complete in its folder, or the reason it failed."""
    if request.problem is not None or request.path is None:
        bar.finish(request.uid, failed=True)
        return (request.uid, "failed", None, 0, 0, request.problem)
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
        series = request.cached or source.fetch_series(
            request.uid, metadata=request.metadata, progress=on_bytes, slots=slots
        )
        status = "cached" if request.cached is not None else "downloaded"
        with source.cache.read_lock(request.uid), storage_errors(request.uid, request.path):
            if _place(series, request.path):  # new links moved the cached files' ctime
                source.cache.restamp(series)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row; the caller raises
        log.debug("series %s failed", request.uid, exc_info=True)
        bar.finish(request.uid, failed=True)
        return (request.uid, "failed", None, 0, 0, f"{type(exc).__name__}: {exc}")
    bar.finish(request.uid)
    return (request.uid, status, str(request.path), len(series.instances), series.bytes, None)


def _refuse_shared_folders(requests: list[SeriesRequest], layout: str) -> None:
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


def _place(series: CachedSeries, folder: Path) -> bool:
    """Place a cached series' files into ``folder`` (:func:`place_file`: reflinks, else hard
    links, else copies); its record last. A file already there that is the cached file, or at
    its recorded size, stays. Whether any hard link was made.

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
    linked = False
    for name in names:
        source, target = series.path / name, folder / name
        with contextlib.suppress(OSError):
            if os.path.samefile(source, target) or (
                target.stat().st_size == source.stat().st_size
            ):
                continue
        with atomic_path(target) as temporary:
            linked |= place_file(source, temporary) == "link"
    _write_record(folder, stamped(replace(series, path=folder)))
    return linked


def _refuse_foreign_folder(series_uid: str, folder: Path) -> None:
    """ValueError when ``folder`` already holds another series (an earlier download whose
    layout gave the same folder): its files are not replaced."""
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
        holder = record["series_uid"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return
    if holder != series_uid:
        raise ValueError(f"{folder} already holds series {holder}; series {series_uid} not placed")


def series_requests(series: Any) -> list[SeriesRequest]:
    """The series asked for, each once, with what a DataFrame says about them; ValueError
    naming every malformed UID."""
    uids = series_uid_values(series)
    metadata: dict[str, dict[str, Any]] = {}
    if is_instance(series, "pandas", "DataFrame"):
        keep = [c for c in series.columns if c in LAYOUT_FIELDS]
        for uid, row in zip(uids, series[keep].to_dict("records"), strict=True):
            if isinstance(uid, str):
                metadata.setdefault(uid.strip(), {k: plain(v) for k, v in row.items()})
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
        SeriesRequest(uid, {k: v for k, v in metadata.get(uid, {}).items() if v is not None})
        for uid in good
    ]


def _add_metadata(source: SeriesSource, requests: list[SeriesRequest], fields: set[str]) -> None:
    """Fill the layout fields missing from what was given or cached, in as few requests as
    possible (getSeriesMetadata, thousands of UIDs per request); sizes and counts become ints
    (or are dropped, to be asked of getSeriesSize)."""
    lacking = [r for r in requests if not fields <= r.metadata.keys()]
    if lacking:
        found = source.series_records([r.uid for r in lacking])
        by_uid = {row.get("SeriesInstanceUID"): row for row in found}
        for request in lacking:
            row = by_uid.get(request.uid, {})
            for name in LAYOUT_FIELDS & row.keys():
                value = plain(row[name])
                if value is not None:
                    request.metadata.setdefault(name, value)
    for request in requests:
        for name in ("FileSize", "ImageCount"):
            if name in request.metadata:
                number = whole_number(request.metadata.pop(name))
                if number is not None:
                    request.metadata[name] = number

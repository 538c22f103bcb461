"""Cohorts: a function mapped over many series, each fetched and read where its task runs.

:func:`map_series` (:meth:`TCIAClient.map_series <intake_tcia.client.TCIAClient.map_series>`)
makes one task per series. A task builds its own :class:`~intake_tcia.client.TCIAClient` from the
caller's settings (pickled without secrets; a worker reads those from its environment), fetches
the series into that client's cache (NBIA or straight from IDC's bucket, as ``settings.backend``
says), verified, reads it as a :class:`~intake_tcia.volume.Volume` (or hands over its file list)
and applies ``func`` there; only the result travels back. With a ``distributed.Client`` the tasks
spread over its workers; without one they run in threads of this process.

Caches: without a dask client, and with ``cache="settings"``, tasks use ``settings.cache_dir`` (a
folder every worker can reach: this machine's, or a shared file system; the cache's file locks and
atomic publication make sharing safe). With a dask client the default, ``cache="worker"``, gives
each worker its own folder, ``<worker.local_directory>/intake-tcia-cache``, which needs no shared
disk and goes away with the worker.

Fault tolerance: each series' row is kept under ``results=`` (a folder of parquet files, one per
series, each written to a temporary name and renamed) as soon as it lands, so a re-run skips the
series already done with no request for them. A worker lost mid-task costs a retry (the scheduler
reruns its tasks); a series half fetched is never published in a worker's cache (the cache
publishes whole series atomically), and each series has one row, whatever ran twice.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .config import Settings
from .errors import MissingDependencyError
from .retrieval.cache import CachedSeries, SeriesCache, atomic_path
from .retrieval.download import series_requests
from .retrieval.layouts import plain

__all__ = ["COLUMNS", "CACHES", "map_series", "process_client", "read_results"]

log = logging.getLogger("intake_tcia")

#: The columns of the table :func:`map_series` returns (and of each file under ``results=``).
COLUMNS = ("SeriesInstanceUID", "status", "result", "error", "worker", "seconds")
#: Where a task's series cache is (see the module doc).
CACHES = ("worker", "settings")
#: Tasks on the scheduler at once; the next series is submitted as one lands (a cohort of
#: 600,000 series never weighs on the scheduler all at once).
_IN_FLIGHT = 2000
#: The folder of a worker's own cache, under its ``local_directory``.
WORKER_CACHE_NAME = "intake-tcia-cache"


class _Client(Protocol):
    """What tasks use of :class:`intake_tcia.client.TCIAClient` (which delegates here, so this
    module does not import it): its settings, cache and router."""

    settings: Settings
    router: Any

    def __init__(self, *, settings: Settings) -> None: ...

    @property
    def cache(self) -> SeriesCache: ...

    def fetch_series(self, series_uid: str, *, collection: str | None = None
                     ) -> CachedSeries: ...


_clients: dict[tuple[type, Settings], Any] = {}
_clients_lock = threading.Lock()


def process_client(settings: Settings, client_type: type[_Client]) -> _Client:
    """This process' client of ``client_type`` for ``settings`` (secrets read from its
    environment), made once; what a task left in the cache's staging area when its process was
    killed is cleared then.

    The class is passed (it pickles by reference) so that this module, which the client
    delegates to, does not import it.
    """
    with _clients_lock:
        client = _clients.get((client_type, settings))
        if client is None:
            client = client_type(settings=settings.with_secrets_from_env())
            client.cache.clean_staging()
            _clients[client_type, settings] = client
        return client


@dataclass(frozen=True)
class _Task:
    """What every task of one :func:`map_series` call needs (pickled once per task)."""

    settings: Settings
    client_type: type[_Client]
    func: Callable[[Any], Any]
    pass_files: bool
    volume_options: dict[str, Any] = field(default_factory=dict)
    cache: str = "settings"
    as_json: bool = False
    keep: bool = True


def _where_am_i() -> tuple[str, Path | None]:
    """The dask worker's address and local directory, or ``("local", None)`` outside one."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return "local", None
    return str(worker.address), Path(worker.local_directory)


def _run_one(task: _Task, series_uid: str, metadata: Mapping[str, Any],
             located: Mapping[str, Any], client: _Client | None = None) -> dict[str, Any]:
    """One series' row: fetched, verified, read and ``func`` applied, where this runs.

    ``located``: the series' IDC location as the caller's one index scan found it (empty when
    not looked up), so that no task scans the index. A failure of the fetch, the read or
    ``func`` is the row's ``error``; the task itself only fails when its process does.
    """
    start = time.perf_counter()
    worker, local_directory = _where_am_i()
    row: dict[str, Any] = {"SeriesInstanceUID": series_uid, "worker": worker}
    try:
        if client is None:
            settings = task.settings
            if task.cache == "worker" and local_directory is not None:
                settings = settings.replace(cache_dir=local_directory / WORKER_CACHE_NAME)
            client = process_client(settings, task.client_type)
        if located:
            client.router.idc.remember(located)
        fetched = series_uid not in client.cache
        try:
            result = _apply(task, client, series_uid, metadata)
        finally:
            if fetched and not task.keep:  # what this task brought in, and only that
                client.cache.remove(series_uid)
        row.update(status="done", result=result, error=None)
        if task.as_json:
            row["result_json"] = json.dumps(result, default=_json_default)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the row's error
        log.debug("series %s failed", series_uid, exc_info=True)
        row.update(status="failed", result=None, error=f"{type(exc).__name__}: {exc}",
                   result_json=None)
    row["seconds"] = time.perf_counter() - start
    return row


def _apply(task: _Task, client: _Client, series_uid: str, metadata: Mapping[str, Any]) -> Any:
    """``func`` of the series (fetched into the client's cache if need be), read as the task
    says."""
    series = client.router.fetch_series(series_uid, collection=metadata.get("Collection"),
                                         metadata=metadata)
    if task.pass_files:
        return task.func([str(p) for p in series.files])
    from .volume import volume_from_files

    with client.cache.read_lock(series_uid):  # not removed while read
        volume = volume_from_files(series.files, **task.volume_options)
    return task.func(volume)


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays, and paths, as JSON; TypeError for anything else."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"the result holds a {type(value).__name__}, which JSON cannot hold "
                    "(results= keeps results as JSON text)")


def map_series(
    tcia: _Client,
    func: Callable[[Any], Any],
    series: Any,
    *,
    client: Any = None,
    results: str | os.PathLike[str] | None = None,
    pass_files: bool = False,
    cache: str | None = None,
    retries: int = 2,
    workers: int | None = None,
    progress: bool = True,
    volume_options: Mapping[str, Any] | None = None,
    keep: bool = True,
) -> pd.DataFrame:
    """``func`` on every series, each fetched and read where its task runs (see
    :meth:`TCIAClient.map_series <intake_tcia.client.TCIAClient.map_series>`)."""
    if not callable(func):
        raise TypeError(f"func must be callable, not {type(func).__name__}")
    if client is not None and not (hasattr(client, "map") and hasattr(client, "scheduler_info")):
        raise TypeError(f"client must be a distributed.Client, not {type(client).__name__}")
    cache = cache or ("worker" if client is not None else "settings")
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {', '.join(CACHES)}, not {cache!r}")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, not {retries!r}")
    workers = tcia.settings.workers if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, not {workers!r}")
    requests = series_requests(series)  # the errors download gives
    folder = None if results is None else Path(results).expanduser()
    if client is not None:
        _check_picklable(func)
    kept = read_results(folder) if folder is not None and folder.is_dir() else _table([])
    done = {uid: row for uid, row in zip(kept["SeriesInstanceUID"], kept.to_dict("records"),
                                          strict=True) if row["status"] == "done"}
    todo = [r for r in requests if r.uid not in done]
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    task = _Task(tcia.settings, type(tcia), func, pass_files, dict(volume_options or {}), cache,
                 as_json=folder is not None, keep=bool(keep))
    rows = dict(done)
    located = _locate(tcia, [r.uid for r in todo])
    bar = _bar(progress, len(requests), len(requests) - len(todo))
    try:
        for row in _rows(task, todo, located, client, tcia, retries, workers):
            if folder is not None:
                _keep(folder, row)
                text = row["result_json"]  # as a re-run will read it back
                row["result"] = None if text is None else json.loads(text)
            row.pop("result_json", None)
            rows[row["SeriesInstanceUID"]] = row
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return _table([rows[r.uid] for r in requests])


def _check_picklable(func: Callable[[Any], Any]) -> None:
    """TypeError, before any task, when ``func`` cannot travel to a worker."""
    import cloudpickle

    try:
        cloudpickle.dumps(func)
    except Exception as exc:  # noqa: BLE001 - pickling fails in many ways
        raise TypeError(
            f"func {getattr(func, '__name__', func)!r} cannot be pickled to send it to the dask "
            f"workers ({type(exc).__name__}: {exc}); define it at module level, without open "
            "files, locks or connections in its closure"
        ) from exc


def _locate(tcia: _Client, uids: list[str]) -> dict[str, dict[str, Any]]:
    """Each series' IDC location from one scan of the index here (a scan costs about a second
    on the real index: once per cohort, not once per task), as ``{uid: {uid: location}}``;
    nothing on backend ``"nbia"``, or on ``"auto"`` without an index."""
    if tcia.settings.backend == "nbia" or not uids:
        return {}
    router = tcia.router
    router.prepare(uids)  # on "idc", no index raises here, before any task
    try:
        return {uid: {uid: router.idc.find(uid)} for uid in uids}
    except (MissingDependencyError, FileNotFoundError):  # "auto" without an index
        return {}


def _rows(task: _Task, todo: list[Any], located: Mapping[str, Any], client: Any,
          tcia: _Client, retries: int, workers: int) -> Iterator[dict[str, Any]]:
    """Each series' row as it lands, from dask's workers or this process' threads."""
    if not todo:
        return
    if client is None:
        with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            futures = [pool.submit(_run_one, task, r.uid, r.metadata, {}, tcia) for r in todo]
            for future in as_completed(futures):
                yield future.result()
        return
    from distributed import as_completed as dask_completed

    run = functools.partial(_run_one, task)
    token = uuid.uuid4().hex[:12]
    uid_of: dict[str, str] = {}

    def submit(requests: list[Any]) -> list[Any]:
        keys = [f"tcia-series-{token}-{r.uid}" for r in requests]
        uid_of.update(zip(keys, (r.uid for r in requests), strict=True))
        return client.map(run, [r.uid for r in requests], [r.metadata for r in requests],
                          [located.get(r.uid, {}) for r in requests], key=keys,
                          retries=retries, pure=False)

    waiting = iter(todo)  # at most _IN_FLIGHT tasks on the scheduler at once
    live = set(submit(list(itertools.islice(waiting, _IN_FLIGHT))))
    landed = dask_completed(list(live))
    finished = False
    try:
        for future in landed:
            live.discard(future)
            try:
                row = future.result()
            except Exception as exc:  # noqa: BLE001 - its workers died, more than allowed
                row = {"SeriesInstanceUID": uid_of[future.key], "status": "failed",
                       "result": None, "error": f"{type(exc).__name__}: {exc}",
                       "worker": None, "seconds": None, "result_json": None}
            uid_of.pop(future.key, None)
            following = next(waiting, None)
            if following is not None:
                (added,) = submit([following])
                live.add(added)
                landed.add(added)
            yield row
        finished = True
    finally:
        if not finished:  # interrupted: the rest need not run
            client.cancel(list(live))


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The result table: one row per series, :data:`COLUMNS`."""
    kinds = {"SeriesInstanceUID": "str", "status": "str", "result": object, "error": object,
             "worker": object, "seconds": "float64"}
    return pd.DataFrame({name: pd.Series([row.get(name) for row in rows], dtype=kind)
                         for name, kind in kinds.items()})


def _file_name(series_uid: str) -> str:
    return f"{series_uid}.parquet"


def _keep(folder: Path, row: dict[str, Any]) -> None:
    """Write one row under ``folder``, atomically (a temporary name, then a rename): a run
    killed meanwhile leaves the earlier file or the new one, never part of one."""
    frame = pd.DataFrame({
        "SeriesInstanceUID": [row["SeriesInstanceUID"]], "status": [row["status"]],
        "result": pd.Series([row.get("result_json")], dtype="string"),
        "error": pd.Series([row.get("error")], dtype="string"),
        "worker": pd.Series([row.get("worker")], dtype="string"),
        "seconds": pd.Series([row.get("seconds")], dtype="float64"),
    })
    target = folder / _file_name(row["SeriesInstanceUID"])
    with atomic_path(target, durable=True) as temporary:
        frame.to_parquet(temporary, index=False)


def read_results(results: str | os.PathLike[str]) -> pd.DataFrame:
    """The rows kept under a ``results=`` folder, ``result`` decoded from its JSON text.

    Returns
    -------
    pandas.DataFrame
        :data:`COLUMNS`, one row per series, sorted by SeriesInstanceUID; empty (same columns)
        for an empty or missing folder.
    """
    folder = Path(results).expanduser()
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    rows = []
    for path in files:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - not ours, or damaged: that series runs again
            log.warning("%s is not a results file (%s); its series runs again", path, exc)
            continue
        for row in frame.to_dict("records"):
            text = row.get("result")
            row["result"] = json.loads(text) if isinstance(text, str) else None
            rows.append({k: plain(v) for k, v in row.items()})
    return _table(sorted(rows, key=lambda r: r["SeriesInstanceUID"]))


def _bar(enabled: bool, total: int, initial: int) -> Any:
    """A tqdm bar over series (None when disabled)."""
    if not enabled or not total:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="series", desc="series")

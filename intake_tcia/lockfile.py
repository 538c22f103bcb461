"""Lockfiles: a cohort pinned to exact bytes, replayed from whichever backend still serves them.

A lockfile is JSON (``docs/lockfile.md`` describes every field)::

    {"format_version": 1, "created": "2026-12-07T13:40:00Z", "tool": "intake-tcia 0.1.0",
     "series": [{"SeriesInstanceUID": "1.2...", "Collection": "...", "PatientID": "...",
                 "StudyInstanceUID": "1.2...", "Modality": "CT",
                 "source": "idc", "idc_version": 21, "nbia_date": null,
                 "crdc_series_uuid": "...", "doi": "10.7937/...", "license": "CC BY 4.0",
                 "instance_count": 2,
                 "instances": [{"SOPInstanceUID": "1.2...", "md5": "<32 hex>"}, ...]}]}

* :func:`lock` fetches each series (or finds it in the cache), verified as any download is, and
  writes the SOP Instance UID and MD5 of every file, with where it came from: IDC (its release and
  ``crdc_series_uuid``) or NBIA (the date of the answer). A selection of which any series fails
  writes no lockfile.
* :func:`replay` reads a lockfile (checking all of it before any request), asks each series of
  its recorded source first (IDC at the recorded release), then of the other, and keeps the copy
  whose every file has the locked MD5 and whose instances are exactly the locked ones. Only when
  every series has such a copy is anything placed under ``dest``; otherwise
  :class:`LockMismatchError` names each series and instance that changed, and ``dest`` is left
  as it was.
* :func:`check_folder` re-hashes the DICOM files of a folder against a lockfile
  (``intake-tcia verify --lock``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._lazy import pandas as pd
from ._validate import validate_uid
from .errors import DownloadError, TCIAError, TCIAIntegrityError, storage_errors
from .manifest import as_series_uids
from .retrieval.cache import LICENSE_NAME, RECORD_NAME, CachedSeries, atomic_path

#: A :class:`~intake_tcia.client.TCIAClient` (not imported: the client imports this module).
TCIAClient = Any

__all__ = [
    "FORMAT_VERSION",
    "SOURCES",
    "LockfileError",
    "LockMismatchError",
    "LockedInstance",
    "LockedSeries",
    "Lockfile",
    "is_lockfile",
    "read_lockfile",
    "write_lockfile",
    "lock",
    "replay",
    "check_folder",
]

#: The lockfile format this version writes and reads.
FORMAT_VERSION = 1
#: Where a locked series came from.
SOURCES = ("idc", "nbia")
_MD5 = re.compile(r"[0-9a-f]{32}")
_LAYOUT_KEYS = ("Collection", "PatientID", "StudyInstanceUID", "Modality")


class LockfileError(TCIAError, ValueError):
    """A lockfile that cannot be used: not JSON, another format version, a field missing or
    malformed (the message names the line, or the series), or series no backend serves."""


class LockMismatchError(TCIAIntegrityError):
    """No backend serves the locked bytes of some series; ``changes`` maps each such
    SeriesInstanceUID to what differs (one line per source and instance). Nothing was placed."""

    def __init__(self, message: str, changes: dict[str, list[str]] | None = None) -> None:
        super().__init__(message, retryable=False)
        self.changes = dict(changes or {})

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.changes)


@dataclass(frozen=True)
class LockedInstance:
    """One file of a locked series: its (0008,0018) *SOP Instance UID* and MD5 (hex)."""

    sop_instance_uid: str
    md5: str


@dataclass(frozen=True)
class LockedSeries:
    """One series of a lockfile (the JSON fields, see the module docstring)."""

    series_uid: str
    source: str
    instances: tuple[LockedInstance, ...]
    idc_version: int | None = None
    nbia_date: str | None = None
    crdc_series_uuid: str | None = None
    doi: str | None = None
    license: str | None = None
    layout: tuple[tuple[str, str], ...] = ()  # Collection, PatientID, ... as locked

    def record(self) -> dict[str, Any]:
        """dict: the series as the lockfile's JSON holds it."""
        return {"SeriesInstanceUID": self.series_uid, **dict(self.layout),
                "source": self.source, "idc_version": self.idc_version,
                "nbia_date": self.nbia_date, "crdc_series_uuid": self.crdc_series_uuid,
                "doi": self.doi, "license": self.license, "instance_count": len(self.instances),
                "instances": [{"SOPInstanceUID": i.sop_instance_uid, "md5": i.md5}
                              for i in self.instances]}


@dataclass(frozen=True)
class Lockfile:
    """A whole lockfile: its series, when and by what it was written."""

    series: tuple[LockedSeries, ...]
    created: str | None = None
    tool: str | None = None

    def record(self) -> dict[str, Any]:
        """dict: the lockfile's JSON."""
        return {"format_version": FORMAT_VERSION, "created": self.created, "tool": self.tool,
                "series": [s.record() for s in self.series]}

    @property
    def series_uids(self) -> list[str]:
        """list of str: the locked series, in the lockfile's order."""
        return [s.series_uid for s in self.series]


def is_lockfile(value: Any) -> bool:
    """bool: ``value`` names a lockfile (a path ending in ``.lock``) or is a :class:`Lockfile`."""
    if isinstance(value, Lockfile):
        return True
    return isinstance(value, (str, os.PathLike)) and os.fspath(value).lower().endswith(".lock")


# -- reading and writing --------------------------------------------------------------------------


def read_lockfile(path: str | os.PathLike[str]) -> Lockfile:
    """Read and check a whole lockfile; :class:`LockfileError` naming the line (JSON syntax) or
    the series (a missing or malformed field), or the format version it does not know."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LockfileError(f"{source}: not a lockfile (not UTF-8 text)") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LockfileError(f"{source}, line {exc.lineno} column {exc.colno}: not JSON "
                            f"({exc.msg})") from exc
    if not isinstance(data, dict) or "format_version" not in data:
        raise LockfileError(f"{source}: not an intake-tcia lockfile (no format_version)")
    if data["format_version"] != FORMAT_VERSION:
        raise LockfileError(f"{source}: format_version {data['format_version']!r} is not one "
                            f"this intake-tcia reads ({FORMAT_VERSION}); upgrade intake-tcia")
    items = data.get("series")
    if not isinstance(items, list) or not items:
        raise LockfileError(f"{source}: 'series' must be a non-empty list")
    series = [_series(item, i, source) for i, item in enumerate(items)]
    seen: set[str] = set()
    for s in series:
        if s.series_uid in seen:
            raise LockfileError(f"{source}: series {s.series_uid} is locked twice")
        seen.add(s.series_uid)
    return Lockfile(tuple(series), _optional(data, "created", str, source),
                    _optional(data, "tool", str, source))


def _optional(item: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = item.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise LockfileError(f"{where}: {key} must be a {kind.__name__} or null, not {value!r}")
    return value


def _series(item: Any, number: int, source: str) -> LockedSeries:
    """One checked series entry (``number`` counts from 0)."""
    uid = item.get("SeriesInstanceUID") if isinstance(item, dict) else None
    where = f"{source}: series {number + 1} ({uid or 'no SeriesInstanceUID'})"
    if not isinstance(item, dict):
        raise LockfileError(f"{where}: not an object")
    try:
        uid = validate_uid(uid, "SeriesInstanceUID")
    except (TypeError, ValueError) as exc:
        raise LockfileError(f"{where}: {exc}") from None
    if item.get("source") not in SOURCES:
        raise LockfileError(f"{where}: source must be one of {', '.join(SOURCES)}, not "
                            f"{item.get('source')!r}")
    instances = item.get("instances")
    if not isinstance(instances, list) or not instances:
        raise LockfileError(f"{where}: 'instances' must be a non-empty list")
    locked = []
    for k, instance in enumerate(instances):
        sop = instance.get("SOPInstanceUID") if isinstance(instance, dict) else None
        md5 = instance.get("md5") if isinstance(instance, dict) else None
        try:
            sop = validate_uid(sop, "SOPInstanceUID")
        except (TypeError, ValueError) as exc:
            raise LockfileError(f"{where}, instance {k + 1}: {exc}") from None
        if not isinstance(md5, str) or not _MD5.fullmatch(md5):
            raise LockfileError(f"{where}, instance {sop}: md5 must be 32 lower-case hex "
                                f"digits, not {md5!r}")
        locked.append(LockedInstance(sop, md5))
    if len({i.sop_instance_uid for i in locked}) != len(locked):
        raise LockfileError(f"{where}: an instance is listed twice")
    count = item.get("instance_count")
    if count != len(locked) or isinstance(count, bool):
        raise LockfileError(f"{where}: instance_count is {count!r} but {len(locked)} "
                            "instances are listed")
    version = _optional(item, "idc_version", int, where)
    if item["source"] == "idc" and (version is None or version < 1):
        raise LockfileError(f"{where}: a series from IDC needs its idc_version")
    layout = tuple((k, str(item[k])) for k in _LAYOUT_KEYS if item.get(k) is not None)
    return LockedSeries(uid, item["source"], tuple(locked), version,
                        _optional(item, "nbia_date", str, where),
                        _optional(item, "crdc_series_uuid", str, where),
                        _optional(item, "doi", str, where), _optional(item, "license", str, where),
                        layout)


def write_lockfile(lockfile: Lockfile, path: str | os.PathLike[str]) -> Path:
    """Write a lockfile atomically (readers see the old one or the new, never a part)."""
    target = Path(path).expanduser()
    with storage_errors("lockfile", target), atomic_path(target) as temporary:
        temporary.write_text(json.dumps(lockfile.record(), indent=1) + "\n", encoding="utf-8")
    return target


# -- locking --------------------------------------------------------------------------------------


def _idc_facts(client: TCIAClient, uids: list[str]) -> dict[str, tuple[str, int]]:
    """SeriesInstanceUID -> (crdc_series_uuid, IDC release) of the copy the client serves, for
    the series the IDC index lists (one index scan; none on backend "nbia", or without an
    index)."""
    if client.settings.backend == "nbia":
        return {}
    from .errors import MissingDependencyError
    from .idc.versions import index_version, pinned

    idc = client.router.idc
    try:
        client.router.prepare(uids)  # one scan; kept for the fetches that follow
        release = pinned(idc) or index_version(idc.index)
    except (MissingDependencyError, FileNotFoundError, TCIAError):
        if client.settings.backend == "idc":
            raise
        return {}
    found = {uid: idc.find(uid) for uid in uids}
    return {uid: (where.prefix.strip("/"), release) for uid, where in found.items() if where}


def _plain(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def lock(client: TCIAClient, series: Any, path: str | os.PathLike[str], *,
         workers: int | None = None) -> Lockfile:
    """Pin series to their bytes (see :meth:`TCIAClient.lock`)."""
    from . import __version__

    uids = as_series_uids(series)
    if not uids:
        raise ValueError("no series to lock: the selection is empty")
    target = Path(path).expanduser()
    if not target.parent.is_dir():
        raise FileNotFoundError(f"no folder {target.parent} to write the lockfile into")
    metadata = client.series_metadata(uids)
    rows = {r["SeriesInstanceUID"]: r for r in metadata.to_dict("records")}
    unknown = [u for u in uids if u not in rows]
    if unknown:
        from .errors import TCIANotFoundError

        raise TCIANotFoundError(404, f"no lockfile written: {len(unknown)} series unknown: "
                                + ", ".join(unknown[:10]), "series_metadata")
    facts = _idc_facts(client, uids)
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()

    def one(uid: str) -> LockedSeries:
        known = {k: v for k, v in rows[uid].items() if _plain(v) is not None}
        first = client.router.file_sources(uid, known)[0].name
        cached = client.fetch_series(uid)
        source = "idc" if first == "idc" and uid in facts else "nbia"
        crdc, release = facts.get(uid, (None, None))
        meta = rows[uid]
        doi = _plain(meta.get("DataDescriptionURI"))
        return LockedSeries(
            uid, source,
            tuple(sorted((LockedInstance(i.sop_instance_uid, i.md5) for i in cached.instances),
                         key=lambda i: i.sop_instance_uid)),
            release if source == "idc" else None,
            today if source == "nbia" else None,
            crdc,
            doi.removeprefix("https://doi.org/") if doi else None,
            _plain(meta.get("LicenseName")),
            tuple((k, str(meta[k])) for k in _LAYOUT_KEYS if _plain(meta.get(k)) is not None))

    locked, failed = _run(one, uids, workers or client.settings.workers)
    if failed:
        lines = "\n".join(f"  {uid}: {error}" for uid, error in failed.items())
        raise DownloadError(f"no lockfile written: {len(failed)} of {len(uids)} series "
                            f"failed:\n{lines}")
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = Lockfile(tuple(locked[u] for u in uids), created, f"intake-tcia {__version__}")
    write_lockfile(result, target)
    return result


def _run(call: Any, uids: list[str], workers: int) -> tuple[dict[str, Any], dict[str, str]]:
    """``call(uid)`` for each series on a pool of threads: results and errors by series."""
    done: dict[str, Any] = {}
    failed: dict[str, str] = {}

    def guarded(uid: str) -> None:
        try:
            done[uid] = call(uid)
        except TCIAError as exc:
            failed[uid] = " ".join(str(exc).split())

    with ThreadPoolExecutor(max(1, min(workers, len(uids)))) as pool:
        list(pool.map(guarded, uids))
    return done, failed


# -- replaying ------------------------------------------------------------------------------------


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def differences(cached: CachedSeries, locked: LockedSeries) -> list[str]:
    """What differs between a copy of a series (its files re-hashed) and the lock: one line per
    instance missing, not locked, or with other bytes; empty when they are the same."""
    got = {i.sop_instance_uid: cached.path / i.name for i in cached.instances}
    problems = []
    for instance in locked.instances:
        path = got.pop(instance.sop_instance_uid, None)
        if path is None:
            problems.append(f"instance {instance.sop_instance_uid}: not served")
            continue
        md5 = _md5_of(path)
        if md5 != instance.md5:
            problems.append(f"instance {instance.sop_instance_uid}: MD5 {md5}, locked "
                            f"{instance.md5}")
    problems += [f"instance {sop}: served, not locked" for sop in sorted(got)]
    return problems


class _Sources:
    """The clients a replay asks: one per (source, IDC release), sharing the caller's cache;
    and, for a copy the cache already held that differs from the lock, fresh ones."""

    def __init__(self, client: TCIAClient, scratch: Path) -> None:
        self.client = client
        self.scratch = scratch
        self._clients: dict[tuple[Any, ...], TCIAClient] = {}
        self._lock = threading.Lock()

    def get(self, source: str, version: int | None, fresh: bool = False) -> TCIAClient:
        key = (source, version, fresh)
        with self._lock:  # series are served from several threads
            if key not in self._clients:
                changes: dict[str, Any] = {"backend": source, "idc_version": version}
                if fresh:
                    changes["cache_dir"] = self.scratch / f"{source}-{version}"
                settings = self.client.settings.replace(**changes)
                self._clients[key] = type(self.client)(settings=settings)
            return self._clients[key]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _order(locked: LockedSeries) -> list[tuple[str, int | None]]:
    """The sources to ask for a locked series: its own first, then the other."""
    idc = ("idc", locked.idc_version)
    return [idc, ("nbia", None)] if locked.source == "idc" else [("nbia", None), idc]


def _serve(sources: _Sources, locked: LockedSeries) -> tuple[TCIAClient | None, list[str]]:
    """The client whose copy of the series is the locked bytes, or None and what differed."""
    problems = []
    for source, version in _order(locked):
        for fresh in (False, True):
            try:
                client = sources.get(source, version, fresh)
                held = client.cache.get(locked.series_uid) is not None
                diff = differences(client.fetch_series(locked.series_uid), locked)
            except (TCIAError, OSError) as exc:
                problems.append(f"from {source}: {' '.join(str(exc).split())}")
                break
            if not diff:
                return client, []
            if fresh or not held:
                problems += [f"from {source}: {line}" for line in diff]
                break
    return None, problems


def replay(client: TCIAClient, path: str | os.PathLike[str] | Lockfile,
           dest: str | os.PathLike[str], *, layout: str | None = None,
           workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Download exactly a lockfile's bytes into ``dest`` (see :meth:`TCIAClient.download`).

    Returns
    -------
    pandas.DataFrame
        :func:`intake_tcia.download.download`'s table, plus ``source`` (``"idc"`` or
        ``"nbia"``: whose copy was placed).

    Raises
    ------
    LockfileError
        Before any request, for a lockfile that cannot be read.
    LockMismatchError
        No backend serves some series' locked bytes; ``dest`` is left as it was.
    """
    from .retrieval.layouts import DEFAULT_LAYOUT

    locked = path if isinstance(path, Lockfile) else read_lockfile(path)
    workers = workers or client.settings.workers
    with _scratch(client) as scratch:
        sources = _Sources(client, scratch)
        try:
            by_uid = {s.series_uid: s for s in locked.series}
            _preflight(sources, locked)
            served, failed = _run(lambda uid: _serve(sources, by_uid[uid]),
                                  locked.series_uids, workers)
            changes = {uid: served[uid][1] for uid in locked.series_uids
                       if uid in served and served[uid][0] is None}
            changes.update({uid: [error] for uid, error in failed.items()})
            if changes:
                lines = "\n".join(f"  series {uid}: {line}" for uid in changes
                                  for line in changes[uid][:20])
                raise LockMismatchError(
                    f"{len(changes)} of {len(locked.series)} series no longer served as locked; "
                    f"nothing placed in {dest}:\n{lines}", changes)
            tables = []
            for chosen in {id(served[u][0]): served[u][0] for u in locked.series_uids}.values():
                group = [s for s in locked.series if served[s.series_uid][0] is chosen]
                frame = pd.DataFrame([{"SeriesInstanceUID": s.series_uid, **dict(s.layout)}
                                      for s in group])
                result = chosen.download(frame, dest, layout=layout or DEFAULT_LAYOUT,
                                         workers=workers, progress=progress)
                name = "idc" if chosen.settings.backend == "idc" else "nbia"
                tables.append(result.assign(source=name))
        finally:
            sources.close()
    order = {u: i for i, u in enumerate(locked.series_uids)}
    results = pd.concat(tables, ignore_index=True)
    return results.sort_values("SeriesInstanceUID", key=lambda s: s.map(order),
                               ignore_index=True)


def _preflight(sources: _Sources, locked: Lockfile) -> None:
    """Before any download: LockfileError naming the series that no backend can serve as
    locked, as far as can be told without downloading: first IDC (no request: its index at the
    locked release lists the locked copy with the locked instance count), then, for the series
    IDC cannot serve, NBIA (one metadata request: it knows the series with that count). An NBIA
    that cannot be reached counts as possibly serving them."""
    from .errors import TCIANotFoundError

    unsure = _idc_unserved(sources, locked)
    if not unsure:
        return
    try:
        frame = sources.get("nbia", None).series_metadata([s.series_uid for s in unsure])
        nbia = {r["SeriesInstanceUID"]: _count(r.get("ImageCount"))
                for r in frame.to_dict("records")}
    except TCIANotFoundError:
        nbia = {}  # it knows none of them
    except TCIAError:
        return  # not reached: it may serve them
    unserved = [s.series_uid for s in unsure
                if nbia.get(s.series_uid, -1) not in (None, len(s.instances))]
    if unserved:
        raise LockfileError(
            f"no backend serves {len(unserved)} locked series as locked (unknown, or another "
            f"number of instances): {', '.join(unserved[:10])}; nothing downloaded")


def _count(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _idc_unserved(sources: _Sources, locked: Lockfile) -> list[LockedSeries]:
    """The locked series IDC's index, at each one's locked release, does not list as locked
    (that copy, that number of instances): no request, one index scan per release."""
    unserved = []
    for version in dict.fromkeys(s.idc_version for s in locked.series):
        group = [s for s in locked.series if s.idc_version == version]
        try:
            router = sources.get("idc", version).router
            router.prepare([s.series_uid for s in group])
            found = {s.series_uid: router.idc.find(s.series_uid) for s in group}
        except (TCIAError, ImportError, OSError):
            unserved += group
            continue
        for series in group:
            where = found[series.series_uid]
            if (where is None or series.crdc_series_uuid not in (None, where.prefix.strip("/"))
                    or where.instance_count not in (None, len(series.instances))):
                unserved.append(series)
    return unserved


@contextlib.contextmanager
def _scratch(client: TCIAClient) -> Iterator[Path]:
    """A temporary folder beside the cache for fresh copies; removed afterwards."""
    root = client.cache_dir / "lock-replay"
    with contextlib.suppress(OSError):
        root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="lock-", dir=root if root.is_dir() else None))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- checking a folder ----------------------------------------------------------------------------

#: The columns of :func:`check_folder`.
CHECK_COLUMNS = ["SeriesInstanceUID", "SOPInstanceUID", "status", "path"]


def check_folder(path: str | os.PathLike[str] | Lockfile,
                 folder: str | os.PathLike[str]) -> pd.DataFrame:
    """Re-hash the DICOM files under ``folder`` against a lockfile.

    Returns
    -------
    pandas.DataFrame
        :data:`CHECK_COLUMNS`, one row per locked instance (status ``"ok"``, ``"changed"`` or
        ``"missing"``) and per DICOM file of a locked series the lock does not list
        (``"not locked"``).
    """
    import pydicom

    locked = path if isinstance(path, Lockfile) else read_lockfile(path)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root} to check")
    wanted = {s.series_uid for s in locked.series}
    found: dict[tuple[str, str], Path] = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if file.name in (RECORD_NAME, LICENSE_NAME) or file.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True,
                                 specific_tags=["SeriesInstanceUID", "SOPInstanceUID"])
            key = (str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        except Exception:  # noqa: BLE001 - not DICOM: not part of the cohort
            continue
        if key[0] in wanted:
            found[key] = file
    rows = []
    for series in locked.series:
        for instance in series.instances:
            file = found.pop((series.series_uid, instance.sop_instance_uid), None)
            status = ("missing" if file is None else
                      "ok" if _md5_of(file) == instance.md5 else "changed")
            rows.append((series.series_uid, instance.sop_instance_uid, status,
                         None if file is None else str(file)))
    rows += [(uid, sop, "not locked", str(file)) for (uid, sop), file in found.items()]
    return pd.DataFrame(rows, columns=CHECK_COLUMNS)

"""What the reliability tests and ``benchmarks/reliability.py`` share: archives at scale, fault
plans, request counts from the server's log, and audits that check the cache and the download
folders against the archive's own files (MD5 of every file, every file parsed by pydicom), without
trusting anything the package wrote about them.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pydicom

import intake_tcia
from intake_tcia.client import TCIAClient
from intake_tcia.retrieval.cache import SeriesCache
from intake_tcia.testing import ArchiveServer, SampleArchive

#: The collection the synthetic series of :func:`build_archive` go into.
COLLECTION = "Reliability"
#: The faults of a fault storm, ``(kind, parameters)``: statuses with a Retry-After, and broken
#: bodies. Cuts come after 1 kB: the server's default cut (half the uncompressed series) can lie
#: beyond the end of a small deflated zip.
STORM_FAULTS: tuple[tuple[str, dict[str, object]], ...] = (
    ("status", {"code": 429, "retry_after": 1}),
    ("status", {"code": 503, "retry_after": 1}),
    ("reset", {"after_bytes": 1024}),
    ("truncate", {"after_bytes": 1024}),
    ("wrong_md5", {}),
)
#: Files a series folder holds besides its DICOM files.
_BOOKKEEPING = {"LICENSE", ".intake-tcia.json"}


def build_archive(
    root: Path, n_series: int, *, instances: int = 2, size: int = 32
) -> tuple[SampleArchive, list[str]]:
    """A new archive in ``root`` with ``n_series`` small synthetic series (one patient each)
    added to the sample collections; returns it and the new SeriesInstanceUIDs."""
    archive = SampleArchive(root)
    uids = [
        archive.add_synthetic_series(COLLECTION, f"REL-{i:04d}", instances, size, size, seed=i)
        for i in range(n_series)
    ]
    return archive, uids


def make_client(server: ArchiveServer, cache: Path, **options: object) -> TCIAClient:
    """A client of ``server`` with tiny backoffs (a server's Retry-After is capped to them)."""
    options = {"retries": 3, "backoff_factor": 0.01, "max_backoff": 0.05, **options}
    return TCIAClient(
        api_url=server.api_url, nlst_api_url=server.nlst_api_url, cache_dir=cache, **options
    )


def md5(data: bytes) -> str:
    """The MD5 (hex) of some bytes."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def archive_md5s(archive: SampleArchive, uid: str) -> dict[str, str]:
    """``{SOPInstanceUID: MD5}`` of a series' files as the archive holds them."""
    return {sop: md5(Path(path).read_bytes()) for sop, path in archive.instances(uid)}


def get_image_counts(server: ArchiveServer) -> Counter[str]:
    """How many getImage requests the server received for each series (its log)."""
    return Counter(
        r.params.get("SeriesInstanceUID", "") for r in server.requests if r.endpoint == "getImage"
    )


# -- fault plans ----------------------------------------------------------------------------------


@dataclass
class StormPlan:
    """The getImage faults planned for each series (consumed in order by its requests)."""

    faults: dict[str, list[str]]
    retries: int

    @property
    def injected(self) -> int:
        """int: getImage faults planned in all."""
        return sum(len(kinds) for kinds in self.faults.values())

    def doomed(self) -> set[str]:
        """set of str: series with more faults than retries: they must be reported failed."""
        return {uid for uid, kinds in self.faults.items() if len(kinds) > self.retries}

    def expected_requests(self, uid: str) -> int:
        """int: getImage requests a series needs: one per fault then one that succeeds, at
        most ``1 + retries``."""
        return min(len(self.faults.get(uid, ())) + 1, self.retries + 1)


def plan_storm(
    server: ArchiveServer, uids: Iterable[str], *, rate: float, retries: int, seed: int,
    doomed_every: int = 25,
) -> StormPlan:
    """Plan getImage faults (seeded): each request of a series fails with probability ``rate``
    (a kind drawn from :data:`STORM_FAULTS`) until one succeeds or ``retries + 1`` have failed;
    every ``doomed_every``-th series fails ``retries + 1`` times in a row, so that some series
    must be reported failed."""
    rng = random.Random(seed)
    faults: dict[str, list[str]] = {}
    for n, uid in enumerate(uids):
        doomed = bool(doomed_every) and n % doomed_every == doomed_every - 1
        count = retries + 1 if doomed else 0
        while count <= retries and rng.random() < rate:
            count += 1
        faults[uid] = []
        for _ in range(count):
            kind, params = rng.choice(STORM_FAULTS)
            server.faults.add(kind, endpoint="getImage", series=uid, **params)
            faults[uid].append(f"{kind} {params.get('code', '')}".strip())
    return StormPlan(faults, retries)


# -- audits ---------------------------------------------------------------------------------------


@dataclass
class Audit:
    """What an audit of a folder tree found.

    Attributes
    ----------
    complete : set of str
        Series whose folder holds exactly the archive's files, byte for byte.
    incomplete : dict of str to str
        Series folders that are not complete, and why.
    corrupt : list of str
        Files that differ from the archive's, or that pydicom cannot read.
    stray : list of str
        Files that belong to no series folder, nor to the cache's bookkeeping.
    leftovers : list of str
        Files in the cache's staging folder, and hidden temporaries (``.*.tmp``) in series
        folders: work in progress, or what a killed process left (never taken for data).
    files : int
        DICOM files checked.
    """

    complete: set[str] = field(default_factory=set)
    incomplete: dict[str, str] = field(default_factory=dict)
    corrupt: list[str] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    files: int = 0


def check_file(path: Path, expected: dict[str, str]) -> str | None:
    """Why a DICOM file is corrupt, or None: it parses with pydicom and its bytes are the
    archive's file of its SOPInstanceUID (``expected``: SOP -> MD5)."""
    data = path.read_bytes()
    try:
        ds = pydicom.dcmread(path)
        sop = str(ds.SOPInstanceUID)
        ds.PixelData  # noqa: B018 - read the pixels too
    except Exception as exc:  # noqa: BLE001 - anything pydicom raises means corrupt
        return f"{path}: unreadable ({type(exc).__name__}: {exc})"
    if sop not in expected:
        return f"{path}: instance {sop} is not in the series"
    if md5(data) != expected[sop]:
        return f"{path}: MD5 {md5(data)} is not the archive's {expected[sop]}"
    return None


def audit_series_folder(folder: Path, archive: SampleArchive, uid: str, audit: Audit) -> None:
    """Check one series folder against the archive; record the result in ``audit``."""
    expected = archive_md5s(archive, uid)
    seen: set[str] = set()
    for path in sorted(folder.iterdir()):
        if path.name in _BOOKKEEPING:
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            audit.leftovers.append(str(path))
            continue
        if path.is_symlink() or not path.is_file():
            audit.corrupt.append(f"{path}: not a regular file")
            continue
        audit.files += 1
        problem = check_file(path, expected)
        if problem:
            audit.corrupt.append(problem)
        else:
            seen.add(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    if seen == set(expected):
        audit.complete.add(uid)
    else:
        audit.incomplete[uid] = f"{len(seen)} of {len(expected)} instances"


def audit_cache(cache: Path, archive: SampleArchive) -> Audit:
    """Check every file under a cache directory: published series against the archive, and
    nothing else but lock files (and single instances the filesystem keeps)."""
    audit = Audit()
    series_root = cache / "series"
    if series_root.is_dir():
        for folder in sorted(series_root.iterdir()):
            audit_series_folder(folder, archive, folder.name, audit)
    singles = cache / "instances"
    if singles.is_dir():
        for folder in sorted(singles.iterdir()):
            expected = archive_md5s(archive, folder.name)
            for path in folder.iterdir():
                audit.files += 1
                problem = check_file(path, expected)
                if problem:
                    audit.corrupt.append(problem)
    for path in _files_under(cache):
        top = path.relative_to(cache).parts[0]
        if top == "staging" and not path.is_symlink():
            audit.leftovers.append(str(path))
        elif top not in ("series", "locks", "instances") or path.is_symlink():
            audit.stray.append(str(path))
    return audit


def audit_download(dest: Path, archive: SampleArchive, table: pd.DataFrame) -> Audit:
    """Check a download destination against the table ``download`` returned: the folder of
    each series reported done is complete, and no DICOM file lies anywhere else."""
    audit = Audit()
    done = table[table["status"].isin(["downloaded", "cached"])]
    folders = set()
    for row in done.itertuples():
        folder = Path(row.path)
        folders.add(folder)
        audit_series_folder(folder, archive, row.SeriesInstanceUID, audit)
    for path in _files_under(dest):
        if path.parent not in folders or path.is_symlink():
            audit.stray.append(str(path))
    return audit


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (files, folders, links), relative, with a type mark."""
    out = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            mark = "l" if path.is_symlink() else "d" if path.is_dir() else "f"
            out.add(f"{mark} {path.relative_to(root)}")
    return out


def _files_under(root: Path) -> list[Path]:
    return [Path(folder, name) for folder, _, files in os.walk(root) for name in files]


# -- scenarios ------------------------------------------------------------------------------------


@dataclass
class StormRun:
    """A download of many series under a fault storm, then the same download again.

    Attributes
    ----------
    plan : StormPlan
        The getImage faults injected.
    query_faults : int
        Faults injected into the metadata request of the download.
    tables : list of pandas.DataFrame
        What each download returned.
    requests : list of Counter
        getImage requests per series, in each download.
    operations : int
        Requests the server answered, both downloads together.
    caches, dests : list of Audit
        Audits of the cache and of the destination after each download.
    """

    plan: StormPlan
    query_faults: int
    tables: list[pd.DataFrame] = field(default_factory=list)
    requests: list[Counter[str]] = field(default_factory=list)
    operations: int = 0
    caches: list[Audit] = field(default_factory=list)
    dests: list[Audit] = field(default_factory=list)

    def lost(self, uids: Iterable[str], run: int) -> set[str]:
        """Series neither complete in the destination nor reported failed after ``run``."""
        table = self.tables[run].set_index("SeriesInstanceUID")["status"]
        return {
            uid for uid in uids
            if uid not in self.dests[run].complete and table.get(uid) != "failed"
        }


def run_storm(
    server: ArchiveServer, uids: list[str], workdir: Path, *, rate: float, retries: int = 3,
    seed: int = 0, workers: int = 4, doomed_every: int = 25,
) -> StormRun:
    """Download ``uids`` while getImage fails at ``rate`` (see :func:`plan_storm`) and the
    download's metadata query fails twice, audit, then download again with no faults."""
    server.reset()
    plan = plan_storm(server, uids, rate=rate, retries=retries, seed=seed,
                      doomed_every=doomed_every)
    server.faults.add("status", endpoint="getSeriesMetadata", code=503, retry_after=1)
    server.faults.add("reset", endpoint="getSeriesMetadata")
    run = StormRun(plan, query_faults=2)
    cache, dest = workdir / "cache", workdir / "dest"
    with make_client(server, cache, retries=retries) as client:
        for _ in range(2):
            table = client.download(
                uids, dest, on_error="return", workers=workers, progress=False
            )
            run.tables.append(table)
            run.requests.append(get_image_counts(server))
            run.operations += server.count()
            run.caches.append(audit_cache(cache, server.archive))
            run.dests.append(audit_download(dest, server.archive, table))
            server.reset()
    return run


_DOWNLOAD_SCRIPT = textwrap.dedent("""
    import sys
    from intake_tcia.client import TCIAClient
    api_url, nlst_api_url, cache, dest, uids = sys.argv[1:6]
    client = TCIAClient(api_url=api_url, nlst_api_url=nlst_api_url, cache_dir=cache,
                        retries=2, backoff_factor=0.01)
    client.download(uids.split(","), dest, workers=2, progress=False)
""")


@dataclass
class KillRun:
    """A download killed with SIGKILL part-way, then run again.

    Attributes
    ----------
    returncode : int
        The killed process' return code (``-SIGKILL``).
    cached_at_kill : set of str
        Series complete in the cache when the process died.
    cache_at_kill : Audit
        Audit of the cache right after the kill (staging leftovers show as ``stray``).
    table : pandas.DataFrame
        What the second download returned.
    requests : Counter
        getImage requests per series in the second download.
    operations : int
        Requests the server answered, both downloads together.
    cache, dest : Audit
        Audits after the second download.
    """

    returncode: int
    cached_at_kill: set[str]
    cache_at_kill: Audit
    table: pd.DataFrame
    requests: Counter[str]
    operations: int
    cache: Audit
    dest: Audit


def run_kill_and_resume(
    server: ArchiveServer, uids: list[str], workdir: Path, *, kill_after: float = 0.3,
    latency: float = 0.05, timeout: float = 120,
) -> KillRun:
    """Run ``client.download`` in a child process, SIGKILL it once ``kill_after`` of the
    series are in the cache, then download again in this process."""
    server.reset()
    server.faults.latency = latency  # slow enough to be caught mid-way
    workdir.mkdir(parents=True, exist_ok=True)
    cache, dest = workdir / "cache", workdir / "dest"
    published = cache / "series"
    env = dict(os.environ, PYTHONPATH=str(Path(intake_tcia.__file__).parents[1]))
    with open(workdir / "child.log", "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", _DOWNLOAD_SCRIPT, server.api_url, server.nlst_api_url,
             str(cache), str(dest), ",".join(uids)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while child.poll() is None and time.monotonic() < deadline:
            if published.is_dir() and len(os.listdir(published)) >= kill_after * len(uids):
                break
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        returncode = child.wait()
    operations = server.count()
    store = SeriesCache(cache)
    cached_at_kill = {uid for uid in uids if store.get(uid) is not None}
    cache_at_kill = audit_cache(cache, server.archive)
    server.reset()
    with make_client(server, cache) as client:
        table = client.download(uids, dest, on_error="return", progress=False)
    return KillRun(
        returncode, cached_at_kill, cache_at_kill, table, get_image_counts(server),
        operations + server.count(), audit_cache(cache, server.archive),
        audit_download(dest, server.archive, table),
    )


def read_series(
    how: str, options: dict[str, object], paths: list[str], uid: str, collection: str
) -> list[tuple[str, str]]:
    """One reader of a series: ``(SOPInstanceUID, MD5)`` of each instance it got, sorted.

    ``how`` is ``"fs"`` (``tcia://`` paths opened with ``fetch="series"``, a filesystem of its
    own) or ``"source"`` (the catalog's series source, ``read()``).
    """
    from intake_tcia.fs import TCIAFileSystem
    from intake_tcia.sources import TCIASeriesSource

    if how == "fs":
        fs = TCIAFileSystem(fetch="series", skip_instance_cache=True, **options)
        got = [(path.rsplit("/", 1)[1][: -len(".dcm")], md5(fs.cat(path))) for path in paths]
    else:
        datasets = TCIASeriesSource(uid, collection=collection, **options).read()
        got = [(str(ds.SOPInstanceUID), md5(Path(ds.filename).read_bytes())) for ds in datasets]
    return sorted(got)


def _read_in_threads(
    hows: list[str], options: dict[str, object], paths: list[str], uid: str, collection: str,
    start: object | None = None,
) -> list[object]:
    """Run one reader per entry of ``hows`` in threads, all starting at once; each result is
    its listing or the text of the exception it raised."""
    gate = threading.Barrier(len(hows))

    def one(how: str) -> object:
        gate.wait()
        try:
            return read_series(how, options, paths, uid, collection)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as a result
            return f"{type(exc).__name__}: {exc}"

    if start is not None:
        start.wait()  # type: ignore[attr-defined]  # every process is ready
    with ThreadPoolExecutor(len(hows)) as pool:
        return list(pool.map(one, hows))


def _reader_process(hows: list[str], options: dict[str, object], paths: list[str], uid: str,
                    collection: str, start: object, results: object) -> None:
    results.put(_read_in_threads(hows, options, paths, uid, collection, start))  # type: ignore


def run_readers(
    server: ArchiveServer, cache: Path, uid: str, *, readers: int = 50, processes: int = 0,
    bandwidth: float = 2e6, timeout: float = 300,
) -> list[object]:
    """``readers`` concurrent readers of one series (half through ``tcia://``, half through the
    series source), in threads of this process or spread over ``processes`` processes (forkserver);
    the link is capped at ``bandwidth`` bytes/s so that they all wait for the one download."""
    server.reset()
    server.faults.bandwidth = bandwidth
    collection, paths = tcia_paths(server, uid)
    options = client_options(server, cache)
    hows = ["fs" if n % 2 else "source" for n in range(readers)]
    if not processes:
        return _read_in_threads(hows, options, paths, uid, collection)
    context = multiprocessing.get_context("forkserver")  # no fork of this threaded process
    context.set_forkserver_preload(["intake_tcia.fs", "intake_tcia.sources", __name__])
    start, results = context.Barrier(processes), context.Queue()
    shares = [hows[n::processes] for n in range(processes)]
    children = [
        context.Process(target=_reader_process,
                        args=(share, options, paths, uid, collection, start, results))
        for share in shares
    ]
    for child in children:
        child.start()
    got = [item for _ in children for item in results.get(timeout=timeout)]
    for child in children:
        child.join(timeout)
    return got


def client_options(server: ArchiveServer, cache: Path, **options: object) -> dict[str, object]:
    """Client keywords for ``server`` with ``cache`` (tiny backoff), as sources and tcia://
    take them."""
    return {"api_url": server.api_url, "nlst_api_url": server.nlst_api_url,
            "cache_dir": str(cache), "retries": 2, "backoff_factor": 0.01, **options}


def tcia_paths(server: ArchiveServer, uid: str) -> tuple[str, list[str]]:
    """A series' collection and the ``tcia://`` paths of its instances."""
    row = server.archive.series.set_index("SeriesInstanceUID").loc[uid]
    collection = str(row["Collection"])
    folder = f"tcia://{collection}/{row['PatientID']}/{row['StudyInstanceUID']}/{uid}"
    return collection, [f"{folder}/{sop}.dcm" for sop, _ in server.archive.instances(uid)]


def fetch_via(way: str, server: ArchiveServer, options: dict[str, object], uid: str,
              dest: Path) -> None:
    """Get a series one of the ways a user can: ``"client"`` (fetch_series), ``"download"``
    (into ``dest``), ``"fs"`` (``tcia://``, ``fetch="series"``) or ``"source"`` (the catalog's
    series source); raises what that way raises (a failed download: TCIAError with its row's
    error)."""
    from intake_tcia.errors import TCIAError
    from intake_tcia.fs import TCIAFileSystem
    from intake_tcia.sources import TCIASeriesSource

    collection, paths = tcia_paths(server, uid)
    if way == "client":
        TCIAClient(**options).fetch_series(uid)  # type: ignore[arg-type]
    elif way == "download":
        table = TCIAClient(**options).download(  # type: ignore[arg-type]
            [uid], dest, on_error="return", progress=False)
        if table.loc[0, "status"] == "failed":
            raise TCIAError(table.loc[0, "error"])
    elif way == "fs":
        TCIAFileSystem(fetch="series", skip_instance_cache=True, **options).cat(paths[0])
    else:
        TCIASeriesSource(uid, collection=collection, **options).read()


#: The ways a user gets a series (see :func:`fetch_via`).
WAYS_IN = ("client", "download", "fs", "source")


#: Operations a hostile server is tried with, and the endpoint each depends on.
OPERATIONS = {"series": "getSeries", "series_metadata": "getSeriesMetadata",
              "fs.ls": "getPatient", "download": "getImage", "source.read": "getImage"}


def ask_via(operation: str, options: dict[str, object], uid: str, dest: Path) -> None:
    """Run one of :data:`OPERATIONS` for series ``uid`` of the sample's Pydicom-CT-Series; a
    failed download raises TCIAError with its row's error."""
    from intake_tcia.errors import TCIAError
    from intake_tcia.fs import TCIAFileSystem
    from intake_tcia.sources import TCIASeriesSource

    collection = "Pydicom-CT-Series"
    if operation == "series":
        TCIAClient(**options).series(collection=collection)  # type: ignore[arg-type]
    elif operation == "series_metadata":
        TCIAClient(**options).series_metadata([uid])  # type: ignore[arg-type]
    elif operation == "fs.ls":
        TCIAFileSystem(skip_instance_cache=True, **options).ls(f"tcia://{collection}")
    elif operation == "download":
        table = TCIAClient(**options).download(  # type: ignore[arg-type]
            pd.DataFrame({"SeriesInstanceUID": [uid], "Collection": [collection]}), dest,
            layout="{SeriesInstanceUID}", on_error="return", progress=False,
        )
        assert table.loc[0, "status"] == "failed" and uid in table.loc[0, "error"]
        raise TCIAError(table.loc[0, "error"])
    else:
        TCIASeriesSource(uid, collection=collection, **options).read()

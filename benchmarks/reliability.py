"""The reliability table of the README: faults injected, operations run, data lost, corrupt files.

Runs the scenarios of the reliability suite (``tests/reliability``) at full size against the
sample archive on loopback, checks every file left in caches and download folders against the
archive's own files (MD5, and parsed by pydicom), and prints one Markdown row per scenario, then
the command that produced the table:

    python benchmarks/reliability.py [--series 200] [--rate 0.2] [--seed 2] [--readers 50]

"Data lost" counts series (or readers) that ended neither complete and verified nor reported
failed, after the rerun where there is one; "corrupt files" counts files that differ from the
archive, cannot be parsed, belong to no complete series, or were written where a hostile answer
pointed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from reliability.harness import (  # noqa: E402
    OPERATIONS,
    WAYS_IN,
    Audit,
    archive_md5s,
    ask_via,
    audit_cache,
    build_archive,
    client_options,
    fetch_via,
    get_image_counts,
    run_kill_and_resume,
    run_readers,
    run_storm,
    tree,
)

from intake_tcia.errors import TCIAError, UnsafeArchiveError  # noqa: E402
from intake_tcia.testing import ArchiveServer  # noqa: E402
from intake_tcia.testing.faults import HOSTILE_KINDS  # noqa: E402

RETRIES = 3
COLUMNS = ("scenario", "faults injected", "operations run", "data lost", "corrupt files")
CT = "Pydicom-CT-Series"
HOSTILE_ANSWERS = {"html": {}, "invalid_json": {}, "endless": {"seconds": 4},
                   "hang": {"seconds": 4}}


def _bad(audits: Iterable[Audit]) -> int:
    """Files that must not be there: corrupt, in an incomplete series folder, or stray."""
    return sum(len(a.corrupt) + len(a.incomplete) + len(a.stray) for a in audits)


def storm(server: ArchiveServer, uids: list[str], work: Path, rate: float, seed: int) -> dict:
    run = run_storm(server, uids, work, rate=rate, retries=RETRIES, seed=seed)
    failed = int((run.tables[0]["status"] == "failed").sum())
    most = max(run.requests[0].values())
    share = run.plan.injected / sum(run.requests[0].values())
    return {
        "scenario": f"{len(uids)} series downloaded while {share:.0%} of getImage requests "
                    "fail (429/503 with Retry-After, resets, truncated zips, wrong MD5s), then "
                    f"again: {failed} reported failed, then fetched; at most {most} getImage "
                    f"a series (1 + {RETRIES} retries)",
        "faults injected": run.plan.injected + run.query_faults,
        "operations run": run.operations,
        "data lost": len(run.lost(uids, 0) | run.lost(uids, 1)),
        "corrupt files": _bad([*run.caches, *run.dests]),
    }


def kill(server: ArchiveServer, uids: list[str], work: Path) -> dict:
    run = run_kill_and_resume(server, uids, work, kill_after=0.5, latency=0.01)
    refetched = sum(run.requests.values())
    missing = len(uids) - len(run.cached_at_kill)
    extra = refetched - missing + sum(run.requests[u] for u in run.cached_at_kill)
    return {
        "scenario": f"download of {len(uids)} series killed (SIGKILL) with "
                    f"{len(run.cached_at_kill)} in the cache, then run again: {refetched} "
                    f"getImage for the {missing} missing, {extra} more",
        "faults injected": 1,
        "operations run": run.operations,
        "data lost": len(set(uids) - run.dest.complete),
        "corrupt files": _bad([run.cache_at_kill, run.cache, run.dest]),
    }


def hostile_zips(server: ArchiveServer, uid: str, work: Path) -> dict:
    faults = operations = lost = bad = refused = 0
    for kind in HOSTILE_KINDS:
        for way in WAYS_IN:
            home = work / f"{kind}-{way}"
            home.mkdir(parents=True)
            options = client_options(server, home / "cache")
            server.reset()
            server.faults.add(kind, endpoint="getImage", series=uid, times=5)
            faults += 1
            before = tree(home)
            try:
                fetch_via(way, server, options, uid, home / "dest")
            except TCIAError as exc:
                refused += isinstance(exc, UnsafeArchiveError) or "UnsafeArchiveError" in str(exc)
            bad += sum(1 for e in tree(home) - before
                       if e.startswith(("f ", "l ")) and not e.endswith(".lock"))
            operations += server.count()
            server.reset()
            fetch_via(way, server, options, uid, home / "dest")  # the real series, now
            operations += server.count()
            audit = audit_cache(home / "cache", server.archive)
            lost += uid not in audit.complete
            bad += _bad([audit])
    return {
        "scenario": f"hostile zips ({', '.join(HOSTILE_KINDS)}) through "
                    f"{', '.join(WAYS_IN)}: {refused} of {faults} refused, nothing written "
                    "outside the cache; then the real series",
        "faults injected": faults,
        "operations run": operations,
        "data lost": lost,
        "corrupt files": bad,
    }


def hostile_answers(server: ArchiveServer, uid: str, work: Path) -> dict:
    faults = operations = unclear = bad = 0
    slowest = 0.0
    for answer, params in HOSTILE_ANSWERS.items():
        for operation, endpoint in OPERATIONS.items():
            cache = work / f"{answer}-{operation}"
            options = client_options(server, cache, retries=1, timeout=(2.0, 0.5),
                                     query_timeout=1.0)
            server.reset()
            server.faults.add(answer, endpoint=endpoint, times=10, **params)
            faults += 1
            start = time.monotonic()
            try:
                ask_via(operation, options, uid, work / "dest")
                unclear += 1
            except TCIAError:
                pass
            slowest = max(slowest, time.monotonic() - start)
            operations += server.count()
            bad += sum(1 for e in tree(cache) if e.startswith(("f ", "l "))
                       and not e.endswith(".lock")) if cache.exists() else 0
    return {
        "scenario": f"server answers HTML, invalid JSON, an endless body or nothing to "
                    f"{len(OPERATIONS)} operations (queries, download, tcia://, source): "
                    f"{faults - unclear} of {faults} clear errors, the slowest after "
                    f"{slowest:.1f} s",
        "faults injected": faults,
        "operations run": operations,
        "data lost": unclear,
        "corrupt files": bad,
    }


def readers(server: ArchiveServer, uid: str, work: Path, count: int, processes: int) -> dict:
    expected = sorted(archive_md5s(server.archive, uid).items())
    results = run_readers(server, work / "cache", uid, readers=count, processes=processes)
    requests = get_image_counts(server)[uid]
    where = f"{processes} processes" if processes else "threads"
    return {
        "scenario": f"{count} concurrent readers ({where}; tcia:// and the series source) of "
                    f"one uncached series: {requests} download",
        "faults injected": 0,
        "operations run": len(results),
        "data lost": sum(1 for r in results if r != expected),
        "corrupt files": _bad([audit_cache(work / "cache", server.archive)]),
    }


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:,}" if isinstance(row[c], int) else row[c]
                                       for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--readers", type=int, default=50)
    args = parser.parse_args(argv)
    logging.getLogger("intake_tcia").setLevel(logging.ERROR)  # retries are expected here
    with tempfile.TemporaryDirectory(prefix="intake-tcia-reliability-") as tmp:
        work = Path(tmp)
        archive, uids = build_archive(work / "archive", args.series)
        load_uid = archive.add_synthetic_series("Reliability", "LOAD", 8, 256, 256, seed=10_000)
        ct_uid = archive.series.query("Collection == @CT and Modality == 'CT'")[
            "SeriesInstanceUID"].iloc[0]
        with ArchiveServer(archive) as server:
            rows = [
                storm(server, uids, work / "storm", args.rate, args.seed),
                kill(server, uids, work / "kill"),
                hostile_zips(server, ct_uid, work / "zips"),
                hostile_answers(server, ct_uid, work / "answers"),
                readers(server, load_uid, work / "threads", args.readers, 0),
                readers(server, load_uid, work / "processes", args.readers, args.readers),
            ]
    totals = {c: sum(r[c] for r in rows) for c in COLUMNS[1:]}
    rows.append({"scenario": "**total**", **totals})
    print(markdown(rows))
    command = "python benchmarks/reliability.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items())
    print(f"\nProduced by `{command}`.")
    return 0 if totals["data lost"] == 0 and totals["corrupt files"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

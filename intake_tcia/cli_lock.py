"""The lockfile commands of ``intake-tcia``: ``lock``, ``download LOCKFILE`` and ``verify --lock``.

``intake-tcia lock [QUERY OPTIONS | UIDS | MANIFEST] -o cohort.lock`` pins the selection
(:meth:`TCIAClient.lock`); ``intake-tcia download cohort.lock -o DEST`` gets exactly those bytes
(:func:`intake_tcia.lockfile.replay`); ``intake-tcia verify --lock cohort.lock DEST`` re-hashes
the files already in DEST (:func:`intake_tcia.lockfile.check_folder`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_lock_command", "run_lock", "is_lock_download", "download_lock", "verify_lock"]


def add_lock_command(command: Callable[..., argparse.ArgumentParser],
                     run: Callable[[argparse.Namespace], int]) -> None:
    """Add ``lock`` through ``build_parser``'s ``command`` helper (``run``: its runner)."""
    sub = command("lock", run, "pin series to their exact bytes in a lockfile (JSON: source, "
                  "IDC release or NBIA date, DOI, licence, each instance's MD5)", selection=True)
    sub.add_argument("-o", "--output", type=Path, required=True, metavar="PATH",
                     help="the lockfile to write (e.g. cohort.lock)")
    sub.add_argument("--workers", type=int, metavar="N", help="series fetched at once")


def run_lock(args: argparse.Namespace, client_for: Callable[..., object],
             selection: Callable[..., object]) -> int:
    """``intake-tcia lock``: fetch or find each series, verified, and write the lockfile."""
    with client_for(args) as client:  # type: ignore[attr-defined]
        series = selection(client, args)
        locked = client.lock(series, args.output, workers=args.workers)
    count = sum(len(s.instances) for s in locked.series)
    print(f"locked {len(locked.series)} series ({count} instances) in {args.output}")
    return 0


def is_lock_download(args: argparse.Namespace) -> bool:
    """bool: ``intake-tcia download`` was given a lockfile (``*.lock``)."""
    return any(str(item).lower().endswith(".lock") for item in args.series or ())


def download_lock(args: argparse.Namespace, client_for: Callable[..., object],
                  usage_error: type[Exception]) -> int:
    """``intake-tcia download cohort.lock -o DEST``: exactly the locked bytes, or nothing."""
    if len(args.series) != 1 or any(getattr(args, n, None) for n in ("collection", "patient_id",
                                                                      "shared_cart")):
        raise usage_error("give one lockfile, and nothing else to select series")
    layout = {"layout": args.layout} if args.layout else {}
    with client_for(args) as client:  # type: ignore[attr-defined]
        results = client.download(args.series[0], args.dest, workers=args.workers,
                                  progress=not args.quiet, **layout)
    sources = results["source"].value_counts()
    print(f"{len(results)} series into {args.dest}, every instance as locked ("
          + ", ".join(f"{n} from {s}" for s, n in sources.items()) + ")")
    return 0


def verify_lock(args: argparse.Namespace, usage_error: type[Exception]) -> int:
    """``intake-tcia verify --lock LOCK DEST``: re-hash DEST's files; status 1 on a difference."""
    from .lockfile import check_folder

    if len(args.series_uids) != 1:
        raise usage_error("verify --lock takes one folder to check: verify --lock LOCK DEST")
    table = check_folder(args.lock, args.series_uids[0])
    bad = table[table["status"] != "ok"]
    for row in bad.itertuples():
        where = f" ({row.path})" if row.path else ""
        print(f"{args.prog}: {row.status}: series {row.SeriesInstanceUID} instance "
              f"{row.SOPInstanceUID}{where}", file=sys.stderr)
    locked = table[table["status"] != "not locked"]
    print(f"{int((locked['status'] == 'ok').sum())} of {len(locked)} locked instances verified "
          f"in {args.series_uids[0]}")
    return 1 if len(bad) else 0

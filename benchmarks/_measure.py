"""Shared helpers of the benchmarks: run a contender in its own process, report time and memory."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def peak_rss_mb() -> float:
    """float: this process' peak resident memory so far, in MB.

    Read from ``VmHWM``, which belongs to the address space made by exec; ``ru_maxrss`` is
    not used because Linux carries the parent's figure over fork and exec.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss_mb() -> float:
    """float: this process' resident memory now, in MB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_contender(script: str, args: Sequence[str]) -> dict[str, Any]:
    """Run ``python script args`` and return the JSON object it prints on its last line."""
    done = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_on_seeded_archive(
    script: str, collection: str, rows: int, contenders: Sequence[str], *, rounds: int,
    repeat: int,
) -> dict[str, list[dict[str, Any]]]:
    """Seed a sample archive with ``rows`` real series of ``collection`` (idc-index-data), then
    run each contender ``rounds`` times in its own process, interleaved so that drift favours
    none; each contender's results, in order. A contender is run as ``script --contender NAME
    --api-url URL --repeat N`` against the host that serves ``collection``."""
    from intake_tcia.testing import ArchiveServer, SampleArchive, idc_series_table

    table = idc_series_table(collection=collection, limit=rows)
    archive = SampleArchive()
    archive.seed_series_metadata(table)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    with ArchiveServer(archive=archive) as server:
        url = server.nlst_api_url if collection == "NLST" else server.api_url
        print(f"seeded {len(table):,} real {collection} series "
              f"({table['PatientID'].nunique():,} patients), served at {url}")
        for _ in range(rounds):
            for name, found in runs.items():
                options = ["--contender", name, "--api-url", url, "--repeat", str(repeat)]
                found.append(run_contender(script, options))
    return runs


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print rows as an aligned text table."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)

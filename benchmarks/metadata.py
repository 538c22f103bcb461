"""Metadata at real scale: getSeries of 100,000 real NLST series into a DataFrame.

The sample archive is seeded with real TCIA metadata (the ``idc-index-data`` package: NLST's
series); its answer to ``getSeries?Collection=NLST`` (JSON, about 77 MB for 100,000 series) is
recorded once and replayed from memory, chunked as a streaming server sends it, so that the
sample server's rendering costs no contender anything. Then each contender runs in a fresh
process per round, interleaved, and its FIRST query is timed, as a user pays it: curl to
/dev/null (the transfer limit), tcia_utils (``nbia.getSeries(..., format="df")``, its base URL
pointed at the replay) and intake-tcia (``TCIAClient.series``, typed columns).

Columns: ``seconds`` (wall time of the query), ``with_import_s`` (the library's import and the
query: intake-tcia imports pandas and pyarrow in its first query, tcia_utils when it is
imported, so this is the fair time to a first answer, and the goal's), ``CPU s`` (user + system
of the whole process:
interpreter, imports and query), ``peak MB`` (the process' peak resident memory, ``VmHWM``;
curl's own) and ``above import MB`` (that peak above the process' memory just before the query);
each the median over ``--rounds`` processes, with the best time of them as an extra column.
Ratios are intake-tcia's figure over tcia_utils'.

    python benchmarks/metadata.py [--rows 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import (  # noqa: E402
    current_rss_mb,
    median,
    peak_rss_mb,
    print_table,
    run_command,
    run_on_seeded_archive,
)

COLLECTION = "NLST"
REQUEST = f"getSeries?Collection={COLLECTION}"
GOAL_TIME, GOAL_MEMORY = 0.4, 0.4  # of tcia_utils' time and peak resident memory


def measure_curl(api_url: str) -> dict:
    found = run_command(["curl", "-sf", "-o", "/dev/null", api_url + REQUEST])
    return {"contender": "curl to /dev/null", "seconds": found["seconds"],
            "with_import_s": found["seconds"],
            "cpu_s": found["cpu_s"], "peak_mb": found["peak_mb"],
            "above_mb": found["peak_mb"], "typed": False}


def measure_ours(api_url: str) -> dict:
    imported = time.perf_counter()
    from intake_tcia import TCIAClient

    client = TCIAClient(api_url=api_url, nlst_api_url=api_url)
    baseline = current_rss_mb()
    start = time.perf_counter()
    frame = client.series(collection=COLLECTION)
    done = time.perf_counter()
    seconds = done - start
    typed = frame["ImageCount"].dtype == "Int64" and str(frame["SeriesDate"].dtype).startswith(
        "datetime64"
    )
    peak = peak_rss_mb()
    return {"contender": "intake-tcia TCIAClient.series()", "seconds": seconds,
            "with_import_s": done - imported,
            "peak_mb": peak, "above_mb": peak - baseline, "typed": typed, "rows": len(frame)}


def measure_tcia_utils(api_url: str) -> dict:
    import logging

    imported = time.perf_counter()
    from tcia_utils import nbia

    logging.getLogger().setLevel(logging.WARNING)
    nbia.setApiUrl = lambda endpoint, api_url_=None: api_url  # point it at the same server
    baseline = current_rss_mb()
    start = time.perf_counter()
    frame = nbia.getSeries(collection=COLLECTION, format="df")
    done = time.perf_counter()
    seconds = done - start
    typed = frame["ImageCount"].dtype == "Int64"
    peak = peak_rss_mb()
    return {"contender": 'tcia_utils getSeries(format="df")', "seconds": seconds,
            "with_import_s": done - imported,
            "peak_mb": peak, "above_mb": peak - baseline, "typed": typed, "rows": len(frame)}


CONTENDERS = {"curl": measure_curl, "tcia_utils": measure_tcia_utils, "ours": measure_ours}


def _summary(found: list[dict]) -> dict:
    """One contender's row: the median of its fresh processes, and its best time."""
    row = dict(found[0])
    for key in ("seconds", "with_import_s", "peak_mb", "above_mb"):
        row[key] = median([r[key] for r in found])
    row["cpu_s"] = median([r.get("cpu_s", r["process_cpu_s"]) for r in found])
    row["best s"] = min(r["seconds"] for r in found)
    row["typed"] = all(r["typed"] for r in found)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="series to seed")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per contender")
    parser.add_argument("--contender", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.contender:
        import json

        print(json.dumps(CONTENDERS[args.contender](args.api_url)))
        return

    runs = run_on_seeded_archive(__file__, COLLECTION, args.rows, list(CONTENDERS),
                                 rounds=args.rounds, repeat=1, replay=[REQUEST])
    curl, peer, ours = (_summary(found) for found in runs.values())
    curl["rows"] = peer["rows"]
    for row in (curl, peer, ours):
        row["typed columns"] = "yes" if row["typed"] else "no"
        row["time vs tcia_utils"] = f"{row['seconds'] / peer['seconds']:.2f}x"
        row["with import vs"] = f"{row['with_import_s'] / peer['with_import_s']:.2f}x"
        row["CPU vs tcia_utils"] = f"{row['cpu_s'] / peer['cpu_s']:.2f}x"
        row["peak vs tcia_utils"] = f"{row['peak_mb'] / peer['peak_mb']:.2f}x"
    print(f"\nfirst query of a fresh process; median of {args.rounds} processes per contender\n")
    print_table([curl, peer, ours], [
        "contender", "rows", "seconds", "best s", "with_import_s", "cpu_s", "peak_mb", "above_mb",
        "time vs tcia_utils", "with import vs", "CPU vs tcia_utils", "peak vs tcia_utils",
        "typed columns"])
    for name, found in zip(("curl", "tcia_utils", "intake-tcia"), runs.values(), strict=True):
        print(f"  {name} per process: " + "; ".join(
            f"{r['seconds']:.2f} s ({r['with_import_s']:.2f} s with import), "
            f"{r.get('cpu_s', r['process_cpu_s']):.2f} CPU s, "
            f"{r['peak_mb']:.0f} MB" for r in found))
    # intake-tcia imports pandas and pyarrow in its first query; tcia_utils when it is imported:
    # the time a user waits for a first answer is the import and the query together
    time_ratio = ours["with_import_s"] / peer["with_import_s"]
    memory_ratio = ours["peak_mb"] / peer["peak_mb"]
    print(
        f"\n| getSeries of {ours['rows']:,} real NLST rows -> DataFrame, import included "
        f"| {curl['seconds']:.2f} s | {peer['with_import_s']:.2f} s, {peer['cpu_s']:.2f} CPU s, "
        f"{peer['peak_mb']:.0f} MB | {ours['with_import_s']:.2f} s ({time_ratio:.2f}x), "
        f"{ours['cpu_s']:.2f} CPU s, {ours['peak_mb']:.0f} MB ({memory_ratio:.2f}x) "
        f"| <= {GOAL_TIME}x tcia_utils time, <= {GOAL_MEMORY}x its peak RSS, still typed |"
    )
    met = time_ratio <= GOAL_TIME and memory_ratio <= GOAL_MEMORY and ours["typed"]
    print(f"goal {'met' if met else 'NOT met'}: time {time_ratio:.2f}x (import included; the "
          f"query alone {ours['seconds'] / peer['seconds']:.2f}x), peak RSS {memory_ratio:.2f}x")


if __name__ == "__main__":
    main()

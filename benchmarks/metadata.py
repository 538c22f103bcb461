"""Metadata at real scale: getSeries of 150,000 real NLST series into a DataFrame.

The sample archive is seeded with real TCIA metadata (the ``idc-index-data`` package: NLST's
series); its answer to ``getSeries?Collection=NLST`` (JSON, 116 MB for 150,000 series) is
recorded once and replayed from memory, chunked as a streaming server sends it, so that the
sample server's rendering costs no contender anything. Then, each in its own processes,
interleaved: curl to /dev/null (the transfer limit), tcia_utils
(``nbia.getSeries(..., format="df")``, its base URL pointed at the replay) and intake-tcia
(``TCIAClient.series``, typed columns). Each row: the best of ``--rounds`` processes of
``--repeat`` queries each; peak memory is the largest seen, above the process' own before the
first query (curl: its whole peak).

    python benchmarks/metadata.py [--rows 150000] [--repeat 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import (  # noqa: E402
    current_rss_mb,
    peak_rss_mb,
    print_table,
    run_command,
    run_on_seeded_archive,
)

COLLECTION = "NLST"
REQUEST = f"getSeries?Collection={COLLECTION}"
GOAL_TIME, GOAL_MEMORY = 0.4, 0.5  # of tcia_utils' (issue 14)


def measure_curl(api_url: str, repeat: int) -> dict:
    runs = [run_command(["curl", "-sf", "-o", "/dev/null", api_url + REQUEST])
            for _ in range(repeat)]
    return {"contender": "curl to /dev/null", "seconds": min(t for t, _ in runs),
            "peak_mb": max(m for _, m in runs), "typed": False}


def measure_ours(api_url: str, repeat: int) -> dict:
    from intake_tcia import TCIAClient

    client = TCIAClient(api_url=api_url, nlst_api_url=api_url)
    baseline = current_rss_mb()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        frame = client.series(collection=COLLECTION)
        times.append(time.perf_counter() - start)
        typed = frame["ImageCount"].dtype == "Int64" and str(frame["SeriesDate"].dtype).startswith(
            "datetime64"
        )
        peak = peak_rss_mb() - baseline
        rows = len(frame)
        del frame
    return {"contender": "intake-tcia TCIAClient.series()", "seconds": min(times),
            "peak_mb": peak, "typed": typed, "rows": rows}


def measure_tcia_utils(api_url: str, repeat: int) -> dict:
    import logging

    from tcia_utils import nbia

    logging.getLogger().setLevel(logging.WARNING)
    nbia.setApiUrl = lambda endpoint, api_url_=None: api_url  # point it at the same server
    baseline = current_rss_mb()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        frame = nbia.getSeries(collection=COLLECTION, format="df")
        times.append(time.perf_counter() - start)
        typed = frame["ImageCount"].dtype == "Int64"
        peak = peak_rss_mb() - baseline
        rows = len(frame)
        del frame
    return {"contender": 'tcia_utils getSeries(format="df")', "seconds": min(times),
            "peak_mb": peak, "typed": typed, "rows": rows}


CONTENDERS = {"curl": measure_curl, "tcia_utils": measure_tcia_utils, "ours": measure_ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=150_000, help="series to seed")
    parser.add_argument("--repeat", type=int, default=3, help="queries per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per contender")
    parser.add_argument("--contender", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.contender:
        import json

        print(json.dumps(CONTENDERS[args.contender](args.api_url, args.repeat)))
        return

    runs = run_on_seeded_archive(__file__, COLLECTION, args.rows, list(CONTENDERS),
                                 rounds=args.rounds, repeat=args.repeat, replay=[REQUEST])
    # each contender's fastest process; its peak memory as the largest seen
    curl, peer, ours = (
        {**min(found, key=lambda r: r["seconds"]), "peak_mb": max(r["peak_mb"] for r in found)}
        for found in runs.values()
    )
    curl["rows"] = peer["rows"]
    for row in (curl, peer, ours):
        row["typed columns"] = "yes" if row["typed"] else "no"
        row["time vs tcia_utils"] = f"{row['seconds'] / peer['seconds']:.2f}x"
        row["memory vs tcia_utils"] = f"{row['peak_mb'] / peer['peak_mb']:.2f}x"
    print_table([curl, peer, ours], ["contender", "rows", "seconds", "peak_mb",
                                     "time vs tcia_utils", "memory vs tcia_utils", "typed columns"])
    time_ratio, memory_ratio = ours["seconds"] / peer["seconds"], ours["peak_mb"] / peer["peak_mb"]
    print(
        f"\n| getSeries of {ours['rows']:,} real NLST rows -> DataFrame "
        f"| {curl['seconds']:.2f} s | {peer['seconds']:.2f} s, {peer['peak_mb']:.0f} MB "
        f"| {ours['seconds']:.2f} s ({time_ratio:.2f}x), {ours['peak_mb']:.0f} MB "
        f"({memory_ratio:.2f}x) | <= {GOAL_TIME}x tcia_utils time, <= {GOAL_MEMORY}x its RSS, "
        f"still typed |"
    )
    met = time_ratio <= GOAL_TIME and memory_ratio <= GOAL_MEMORY and ours["typed"]
    print(f"goal {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()

"""Metadata at real scale: getSeries of a 100,000+ series collection into a DataFrame.

The sample archive is seeded with real TCIA metadata (the ``idc-index-data`` package: NLST's
series), then ``getSeries(Collection=NLST)`` is read into a DataFrame by intake-tcia
(``TCIAClient.series``, typed columns) and by tcia_utils (``nbia.getSeries(..., format="df")``,
its base URL pointed at the same server), each in its own processes, interleaved: the best of
``--rounds`` processes of ``--repeat`` queries each (peak memory: the largest seen).

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
    run_on_seeded_archive,
)

COLLECTION = "NLST"


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
        del frame
    return {"contender": "intake-tcia", "seconds": min(times), "peak_mb": peak, "typed": typed}


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
    return {
        "contender": "tcia_utils",
        "seconds": min(times),
        "peak_mb": peak,
        "typed": typed,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=150_000, help="series to seed")
    parser.add_argument("--repeat", type=int, default=3, help="queries per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per contender")
    parser.add_argument("--contender", choices=["ours", "tcia_utils"], help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.contender:
        import json

        measure = measure_ours if args.contender == "ours" else measure_tcia_utils
        print(json.dumps(measure(args.api_url, args.repeat)))
        return

    runs = run_on_seeded_archive(__file__, COLLECTION, args.rows, ["tcia_utils", "ours"],
                                 rounds=args.rounds, repeat=args.repeat)
    # each contender's fastest process; its peak memory as the largest seen
    peer, ours = (
        {**min(found, key=lambda r: r["seconds"]), "peak_mb": max(r["peak_mb"] for r in found)}
        for found in runs.values()
    )
    results = [peer, ours]
    ours["rows"] = peer["rows"]
    print_table(results, ["contender", "rows", "seconds", "peak_mb", "typed"])
    print(
        f"\nintake-tcia / tcia_utils: time {ours['seconds'] / peer['seconds']:.2f}x, "
        f"peak memory {ours['peak_mb'] / peer['peak_mb']:.2f}x (lower is better)"
    )


if __name__ == "__main__":
    main()

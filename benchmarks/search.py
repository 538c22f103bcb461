"""NBIA's advanced search at scale: the same getSimpleSearch by intake-tcia and by tcia_utils.

The sample archive is seeded with real TCIA metadata (``idc-index-data``: NLST's series), then
the same search (collection NLST, modality CT) is run by intake-tcia (``TCIAClient.search``: a
typed getSeries-shaped DataFrame, manifest pages of 1,000 patients, getSeriesMetadata) and by
tcia_utils (``nbia.getSimpleSearch(..., format="uids")``: one manifest request, a list of UIDs;
and its default JSON page of 10 patients), each in its own processes, interleaved: the best of
``--rounds`` processes of ``--repeat`` searches each (peak memory: the largest seen). The same
search is also answered on ``backend="idc"`` from the real IDC index (all of NLST's series, no
server), its copy of NLST kept in a cache made for the run.

    python benchmarks/search.py [--rows 50000] [--repeat 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import (  # noqa: E402
    current_rss_mb,
    peak_rss_mb,
    print_table,
    run_on_seeded_archive,
)

COLLECTION, MODALITY = "NLST", "CT"


def measure_ours(api_url: str, repeat: int) -> dict:
    from intake_tcia import TCIAClient

    client = TCIAClient(api_url=api_url, nlst_api_url=api_url)
    baseline = current_rss_mb()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        frame = client.search(collection=COLLECTION, modality=MODALITY)
        times.append(time.perf_counter() - start)
        rows, peak = len(frame), peak_rss_mb() - baseline
        del frame
    return {"contender": "intake-tcia search", "gives": "typed series DataFrame", "rows": rows,
            "seconds": min(times), "peak_mb": peak}


def measure_ours_idc(repeat: int) -> dict:
    """The same search on backend="idc": the real index (all of NLST, not the seeded part)."""
    from intake_tcia import TCIAClient

    client = TCIAClient(backend="idc")  # INTAKE_TCIA_CACHE_DIR: the run's own cache
    baseline = current_rss_mb()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        frame = client.search(collection=COLLECTION, modality=MODALITY)
        times.append(time.perf_counter() - start)
        rows, peak = len(frame), peak_rss_mb() - baseline
        del frame
    return {"contender": "intake-tcia search, backend idc", "gives": "typed series DataFrame",
            "rows": rows, "seconds": min(times), "peak_mb": peak}


def measure_tcia_utils(api_url: str, repeat: int, fmt: str) -> dict:
    import logging

    from tcia_utils import nbia

    logging.getLogger().setLevel(logging.WARNING)
    nbia.setApiUrl = lambda endpoint, api_url_=None: api_url  # point it at the same server
    baseline = current_rss_mb()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        found = nbia.getSimpleSearch(collections=[COLLECTION], modalities=[MODALITY], format=fmt)
        times.append(time.perf_counter() - start)
        rows = len(found) if fmt == "uids" else len(found["resultSet"])
        peak = peak_rss_mb() - baseline
        del found
    gives = "list of UIDs" if fmt == "uids" else "JSON page of patients"
    return {"contender": f"tcia_utils getSimpleSearch({fmt or 'json'})", "gives": gives,
            "rows": rows, "seconds": min(times), "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="series to seed")
    parser.add_argument("--repeat", type=int, default=3, help="searches per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per contender")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.contender:
        import json

        if args.contender == "ours":
            result = measure_ours(args.api_url, args.repeat)
        elif args.contender == "ours-idc":
            result = measure_ours_idc(args.repeat)
        else:
            fmt = args.contender.removeprefix("tcia_utils")
            result = measure_tcia_utils(args.api_url, args.repeat, fmt.lstrip(":"))
        print(json.dumps(result))
        return

    contenders = ["tcia_utils:uids", "tcia_utils", "ours", "ours-idc"]
    with tempfile.TemporaryDirectory(prefix="search-bench-") as cache:
        os.environ["INTAKE_TCIA_CACHE_DIR"] = cache  # the IDC contender's copy of NLST
        runs = run_on_seeded_archive(__file__, COLLECTION, args.rows, contenders,
                                     rounds=args.rounds, repeat=args.repeat)
    results = [
        {**min(found, key=lambda r: r["seconds"]), "peak_mb": max(r["peak_mb"] for r in found),
         "spread_s": f"{min(r['seconds'] for r in found):.2f}-"
                     f"{max(r['seconds'] for r in found):.2f}"}
        for found in runs.values()
    ]
    print_table(results, ["contender", "gives", "rows", "seconds", "spread_s", "peak_mb"])
    uids, _, ours, idc = results
    print(f"\nintake-tcia / tcia_utils(uids): time {ours['seconds'] / uids['seconds']:.2f}x, "
          f"peak memory {ours['peak_mb'] / max(uids['peak_mb'], 0.01):.2f}x (lower is better)")
    print(f"intake-tcia on the IDC index (real, {idc['rows']:,} series; its first search in a "
          f"run reads NLST into the cache, the best of --repeat is shown): {idc['seconds']:.2f} s")


if __name__ == "__main__":
    main()

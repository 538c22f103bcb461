"""Series metadata from the real IDC index (idc-index-data, ~1M series): intake-tcia vs idc-index.

The same question, every series of collection NLST (~600,000), asked of the installed
``idc-index-data`` package's ``idc_index.parquet`` by:

* intake-tcia, ``TCIAClient(backend="idc").series(collection="NLST")``: the typed v4 getSeries
  DataFrame (TCIA names, dates, nullable integers), no request. Measured twice: with an empty
  cache (the first question ever: the collection is read from the parquet and kept as an Arrow
  copy in the cache) and with that copy in place (every later process);
* idc-index, ``IDCClient().sql_query("SELECT <the same index columns> FROM index WHERE
  collection_id = 'nlst'")``: its raw columns as a DataFrame (it loads the whole index into pandas
  when the client is made).

Each contender runs in its own processes, ``--rounds`` of them, interleaved: ``cold start`` is
import + client + first answer in a fresh process, ``warm`` the best of ``--repeat`` further
answers in that process, ``peak_mb`` the process' peak resident memory (VmHWM; the largest seen).

    python benchmarks/idc_metadata.py [--rounds 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import peak_rss_mb, print_table, run_contender  # noqa: E402

COLLECTION, COLLECTION_ID = "NLST", "nlst"


def _timed(label: str, start: float, imported: float, ask, repeat: int) -> dict:
    """A contender's figures: ``ask()`` once cold (after its import), then ``repeat`` times warm."""
    frame = ask()
    first = time.perf_counter()
    rows = len(frame)
    del frame
    warm = []
    for _ in range(repeat):
        t = time.perf_counter()
        frame = ask()
        warm.append(time.perf_counter() - t)
        del frame
    return {
        "contender": label,
        "rows": rows,
        "import_s": imported - start,
        "cold_start_s": first - start,
        "warm_s": min(warm),
        "peak_mb": peak_rss_mb(),
    }


def measure_ours(cache_dir: str, repeat: int, label: str) -> dict:
    start = time.perf_counter()
    from intake_tcia import TCIAClient

    imported = time.perf_counter()
    client = TCIAClient(backend="idc", cache_dir=cache_dir)
    return _timed(label, start, imported, lambda: client.series(collection=COLLECTION), repeat)


def measure_idc_index(repeat: int, columns: list[str]) -> dict:
    start = time.perf_counter()
    from idc_index import IDCClient

    imported = time.perf_counter()
    client = IDCClient()
    query = f"SELECT {', '.join(columns)} FROM index WHERE collection_id = '{COLLECTION_ID}'"
    return _timed("idc-index sql_query", start, imported, lambda: client.sql_query(query), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="processes per contender")
    parser.add_argument("--repeat", type=int, default=3, help="warm answers per process")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--columns", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.contender:
        import json

        if args.contender == "idc-index":
            result = measure_idc_index(args.repeat, args.columns.split(","))
        else:
            label = {"ours-first": "intake-tcia, empty cache", "ours": "intake-tcia, cached copy"}[
                args.contender
            ]
            result = measure_ours(args.cache_dir, args.repeat, label)
        print(json.dumps(result))
        return

    from intake_tcia.idc.index import READ_COLUMNS  # the columns our v4 frame is made of; asked of
                                              # idc-index too (imported here, not in its process)

    columns = ",".join(READ_COLUMNS)
    runs: dict[str, list[dict]] = {"ours-first": [], "ours": [], "idc-index": []}
    work = Path(tempfile.mkdtemp(prefix="idc-metadata-bench-"))
    try:  # one untimed run leaves the copy the "cached copy" contender reads
        run_contender(
            __file__, ["--contender", "ours", "--repeat", "1", "--cache-dir", str(work / "kept")]
        )
        for round_ in range(args.rounds):
            for name, found in runs.items():
                cache = work / (f"empty-{round_}" if name == "ours-first" else "kept")
                options = [
                    "--contender",
                    name,
                    "--repeat",
                    str(args.repeat),
                    "--cache-dir",
                    str(cache),
                    "--columns",
                    columns,
                ]
                found.append(run_contender(__file__, options))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = []
    for found in runs.values():
        best = min(found, key=lambda r: r["cold_start_s"])
        results.append(
            {
                **best,
                "warm_s": min(r["warm_s"] for r in found),
                "peak_mb": max(r["peak_mb"] for r in found),
                "cold_spread_s": f"{min(r['cold_start_s'] for r in found):.2f}-"
                f"{max(r['cold_start_s'] for r in found):.2f}",
            }
        )
    print_table(
        results,
        ["contender", "rows", "import_s", "cold_start_s", "cold_spread_s", "warm_s", "peak_mb"],
    )
    first, ours, theirs = results
    print(
        f"\nintake-tcia (cached copy) / idc-index: cold start "
        f"{ours['cold_start_s'] / theirs['cold_start_s']:.2f}x, peak memory "
        f"{ours['peak_mb'] / theirs['peak_mb']:.2f}x, warm answer "
        f"{ours['warm_s'] / theirs['warm_s']:.2f}x (lower is better)"
    )
    print(
        f"intake-tcia (empty cache) / idc-index: cold start "
        f"{first['cold_start_s'] / theirs['cold_start_s']:.2f}x, peak memory "
        f"{first['peak_mb'] / theirs['peak_mb']:.2f}x"
    )
    print(
        f"series(collection='NLST') with the cached copy: first answer in a fresh process "
        f"{ours['cold_start_s'] - ours['import_s']:.2f} s (after import), warm "
        f"{ours['warm_s']:.3f} s"
    )


if __name__ == "__main__":
    main()

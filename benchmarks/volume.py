"""Time and peak memory to build a CT volume from files: intake_tcia.volume vs a pydicom loop.

Writes N synthetic CT slices (int16, rescale intercept -1024) in shuffled file order to a temp
directory, then runs each contender in its own fresh interpreter:

* ``pydicom loop``: the usual notebook code: ``dcmread`` every file, sort by InstanceNumber,
  ``np.stack`` the ``pixel_array`` s, then ``* slope + intercept`` (float64, as numpy gives it).
* ``volume_from_files``: headers first (``stop_before_pixels``), then each slice decoded into
  the preallocated output, rescaled in place (int16 here), with geometry checks and an affine.
* ``volume_from_files(lazy=True).compute()``: the same through dask, one chunk per slice.

Reported per contender: best wall time of ``--repeat`` runs, peak RSS growth over the
interpreter's state before the run (``ru_maxrss``), and the tracemalloc peak of one extra run
(numpy buffers included). Run: ``python benchmarks/volume.py [--slices 200] [--size 512]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("pydicom loop", "volume_from_files", "volume_from_files lazy+compute")


def write_series(folder: Path, slices: int, size: int) -> None:
    """N axial CT slices, 1.25 mm apart, files named in shuffled order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    names = list(range(slices))
    random.Random(0).shuffle(names)
    series_uid = generate_uid()
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Modality, ds.PatientID, ds.SeriesInstanceUID = "CT", "BENCH", series_uid
        ds.StudyInstanceUID = "1.2.3"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-250.0, -250.0, round(-300.0 + 1.25 * k, 4)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.SliceThickness = 1.25
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 2047, (size, size), dtype="<i2").tobytes()
        ds.save_as(folder / f"{names[k]:05d}.dcm", enforce_file_format=True)


def pydicom_loop(paths: list[str]) -> np.ndarray:
    """The naive baseline."""
    import pydicom

    datasets = sorted((pydicom.dcmread(p) for p in paths), key=lambda ds: int(ds.InstanceNumber))
    stacked = np.stack([ds.pixel_array for ds in datasets])
    return stacked * float(datasets[0].RescaleSlope) + float(datasets[0].RescaleIntercept)


def ours_eager(paths: list[str]) -> np.ndarray:
    from intake_tcia.volume import volume_from_files

    return volume_from_files(paths).array


def ours_lazy(paths: list[str]) -> np.ndarray:
    from intake_tcia.volume import volume_from_files

    return volume_from_files(paths, lazy=True).array.compute()


def child(name: str, folder: str, repeat: int) -> None:
    """Measure one contender in this (fresh) interpreter; print a JSON line."""
    sys.path.insert(0, str(ROOT))
    import dask.array  # noqa: F401  (imports are not what we time)
    import pydicom  # noqa: F401

    import intake_tcia.volume  # noqa: F401

    run: Callable[[list[str]], np.ndarray] = dict(
        zip(CONTENDERS, (pydicom_loop, ours_eager, ours_lazy), strict=True))[name]
    paths = sorted(str(p) for p in Path(folder).iterdir())
    base_kib = _rss_kib()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = run(paths)
        times.append(time.perf_counter() - start)
        del out
    peak_rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kib) / 1024
    tracemalloc.start()
    out = run(paths)
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(json.dumps({"name": name, "seconds": min(times), "rss_mib": peak_rss,
                      "traced_mib": traced, "dtype": str(out.dtype), "shape": out.shape,
                      "checksum": float(out.astype(np.float64).sum())}))


def _rss_kib() -> int:
    """Current resident set size, KiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dir, args.repeat)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_series(Path(tmp), args.slices, args.size)
        mib = args.slices * args.size**2 * 2 / 2**20
        print(f"{args.slices} slices of {args.size}x{args.size} int16 ({mib:.0f} MiB of pixels), "
              f"best of {args.repeat}, each contender in a fresh interpreter\n")
        rows = []
        for name in CONTENDERS:
            done = subprocess.run(
                [sys.executable, __file__, "--child", name, "--dir", tmp, "--repeat",
                 str(args.repeat)], capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if len({round(r["checksum"]) for r in rows}) != 1:
        raise SystemExit(f"contenders disagree: {[r['checksum'] for r in rows]}")
    base = rows[0]
    print(f"{'contender':<34}{'time s':>8}{'peak RSS MiB':>14}{'traced MiB':>12}  dtype    "
          f"{'time x':>7}{'RSS x':>7}")
    for r in rows:
        print(f"{r['name']:<34}{r['seconds']:>8.3f}{r['rss_mib']:>14.0f}{r['traced_mib']:>12.0f}"
              f"  {r['dtype']:<8} {base['seconds'] / r['seconds']:>6.2f}x"
              f"{base['rss_mib'] / max(r['rss_mib'], 1):>6.2f}x")
    print("\n'x' columns: pydicom loop / contender (above 1 means the contender is faster or "
          "smaller). All contenders produce the same values (checksums agree).")


if __name__ == "__main__":
    main()

"""Masks through rt-utils and back: how many voxels intake-tcia reads back from its RTSTRUCT.

rt-utils (like OpenCV's contour tracing it uses, and many planning systems) draws each contour
through the centres of the mask's edge pixels. This writes a few small masks on the sample
archive's CT with rt-utils, reads the RTSTRUCT back with ``read_segmentation`` and prints, per
mask, its voxels, the voxels read back and whether the two masks are identical.

Needs rt-utils and OpenCV, which the project does not depend on:
``pip install --no-deps rt-utils opencv-python-headless``. Run:
``python benchmarks/rtstruct_roundtrip.py``.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from intake_tcia.segmentation import read_segmentation
from intake_tcia.testing import SampleArchive
from intake_tcia.volume import volume_from_files


def main() -> None:
    from rt_utils import RTStructBuilder

    warnings.simplefilter("ignore")
    archive = SampleArchive.default()
    table = archive.series
    uid = str(table[(table.Collection == "Pydicom-CT-Series")
                    & (table.Modality == "CT")].SeriesInstanceUID.iloc[0])
    folder = Path(tempfile.mkdtemp())
    try:
        for _, path in archive.instances(uid):
            shutil.copy(path, folder)
        volume = volume_from_files(folder)
        rows, columns = volume.shape[1:]
        jj, ii = np.mgrid[:rows, :columns]
        shapes = {
            "disc r=3": (jj - 40) ** 2 + (ii - 50) ** 2 <= 9,
            "disc r=6": (jj - 40) ** 2 + (ii - 50) ** 2 <= 36,
            "square 5x5": (abs(jj - 60) <= 2) & (abs(ii - 70) <= 2),
            "ring r=8/3": ((jj - 80) ** 2 + (ii - 80) ** 2 <= 64)
            & ((jj - 80) ** 2 + (ii - 80) ** 2 > 9),
        }
        rt = RTStructBuilder.create_new(dicom_series_path=str(folder))
        for name, plane in shapes.items():
            mask = np.zeros((rows, columns, volume.shape[0]), bool)  # rt-utils: (y, x, slice)
            mask[:, :, 4] = plane
            rt.add_roi(mask=mask, name=name)
        rt.save(str(folder / "rt.dcm"))
        seg = read_segmentation(folder / "rt.dcm", volume)
        for s, name in enumerate(seg.segments["label"]):
            got = seg.masks[s]
            k = int(np.argmax(got.sum(axis=(1, 2))))
            same = bool((got[k] == shapes[name]).all() and got.sum() == shapes[name].sum())
            print(f"{name:12s} mask {int(shapes[name].sum()):4d} voxels, read back "
                  f"{int(got.sum()):4d} ({got.sum() / shapes[name].sum():.0%}), identical: {same}")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()

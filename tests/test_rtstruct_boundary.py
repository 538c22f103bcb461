"""RTSTRUCT contours drawn through the centres of a mask's edge pixels (as rt-utils, OpenCV's
contour tracing and planning systems draw them) read back as the mask they came from.

The expected masks are made without intake_tcia: digital discs (the lattice points of a convex
region, so the convex hull of their centres is a contour through their edge pixel centres),
and polygons with whole-pixel vertices, whose edge centres are found by exact integer steps
(gcd) and whose inside comes from scikit-image's polygon fill.
"""

from __future__ import annotations

import copy
from math import gcd

import numpy as np
import pydicom
import pytest

from intake_tcia.segmentation import read_segmentation
from intake_tcia.testing._annotations import Contour, make_rtstruct
from intake_tcia.volume import volume_from_datasets

skimage_draw = pytest.importorskip("skimage.draw")
spatial = pytest.importorskip("scipy.spatial")

ROWS, COLUMNS = 40, 44


def _series(n: int = 3) -> list[pydicom.Dataset]:
    template = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm", download=False))
    uid = pydicom.uid.generate_uid()
    out = []
    for z in range(n):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.PixelSpacing = [0.7, 0.9]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-12.3, 40.7, 2.5 * z]
        ds.InstanceNumber = z + 1
        ds.PixelData = np.zeros((ROWS, COLUMNS), np.int16).tobytes()
        out.append(ds)
    return out


def _read(series, rois):
    ds = make_rtstruct(series, rois, series_uid=pydicom.uid.generate_uid(),
                       sop_uid=pydicom.uid.generate_uid())
    return read_segmentation(ds, volume_from_datasets(series))


def _on_edges(vertices: list[tuple[int, int]]) -> np.ndarray:
    """Pixels whose centres lie on the closed polygon, by exact integer steps."""
    out = np.zeros((ROWS, COLUMNS), bool)
    for (a, b), (c, d) in zip(vertices, vertices[1:] + vertices[:1], strict=True):
        g = gcd(abs(c - a), abs(d - b)) or 1
        for t in range(g + 1):
            out[a + t * (c - a) // g, b + t * (d - b) // g] = True
    return out


def _filled(vertices: list[tuple[int, int]]) -> np.ndarray:
    out = np.zeros((ROWS, COLUMNS), bool)
    rr, cc = skimage_draw.polygon([v[0] for v in vertices], [v[1] for v in vertices],
                                  shape=out.shape)
    out[rr, cc] = True
    return out


@pytest.mark.parametrize("radius", [2, 3, 4, 6, 9])
def test_a_disc_traced_through_its_edge_pixel_centres_reads_back_whole(radius):
    series = _series()
    jj, ii = np.mgrid[:ROWS, :COLUMNS]
    disc = (jj - 20) ** 2 + (ii - 21) ** 2 <= radius ** 2
    centres = np.argwhere(disc)
    hull = centres[spatial.ConvexHull(centres).vertices]
    seg = _read(series, [("disc", [Contour(1, tuple(map(tuple, hull.astype(float))))])])
    assert seg.masks[0, 1].sum() == disc.sum()
    np.testing.assert_array_equal(seg.masks[0, 1], disc)
    assert not seg.masks[0, [0, 2]].any()


def test_polygons_with_whole_pixel_vertices_include_their_edge_centres():
    series = _series()
    rng = np.random.default_rng(3)
    for _ in range(20):
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=7))
        radius = rng.uniform(4, 14, size=7)
        vertices = [(int(round(20 + r * np.sin(a))), int(round(21 + r * np.cos(a))))
                    for a, r in zip(angles, radius, strict=True)]
        seg = _read(series, [("shape", [Contour(0, tuple(map(tuple, vertices)))])])
        expected = _filled(vertices) | _on_edges(vertices)
        np.testing.assert_array_equal(seg.masks[0, 0], expected, err_msg=str(vertices))


def test_a_hole_traced_through_the_edge_pixels_around_it_keeps_them():
    outer = [(5, 5), (5, 30), (30, 30), (30, 5)]
    inner = [(12, 12), (12, 20), (20, 20), (20, 12)]  # through the ring pixels around the hole
    seg = _read(_series(), [("ring", [Contour(0, tuple(outer)), Contour(0, tuple(inner))])])
    expected = np.zeros((ROWS, COLUMNS), bool)
    expected[5:31, 5:31] = True
    expected[13:20, 13:20] = False  # the hole: centres strictly inside the inner contour
    np.testing.assert_array_equal(seg.masks[0, 0], expected)

"""Pictures: every panel upright whatever the stored order, CT windows, mask outlines, the
slider, and xarray's own plot of a slice upright with HU on its colour bar.

Upright is checked against the affine alone: each voxel's value encodes its index, so the
displayed image tells which voxel lands at the top, bottom, left and right of each panel, and
the affine says where that voxel is in the patient (LPS).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from intake_tcia.errors import MissingDependencyError
from intake_tcia.segmentation import Segmentation
from intake_tcia.volume import Volume, to_xarray

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")

SHAPE = (7, 9, 11)  # z, y, x
SPACING = (2.0, 0.8, 0.6)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _volume(row: tuple, column: tuple, modality: str = "CT") -> Volume:
    """Voxel values k*10000 + j*100 + i on a grid of the given direction cosines."""
    r, c = np.array(row, float), np.array(column, float)
    n = np.cross(r, c)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = n * SPACING[0], c * SPACING[1], r * SPACING[2]
    affine[:3, 3] = (-20.0, 30.0, 100.0)
    k, j, i = np.indices(SHAPE)
    return Volume(array=(k * 10000 + j * 100 + i).astype(np.int32), affine=affine,
                  positions=float(affine[:3, 3] @ n) + SPACING[0] * np.arange(SHAPE[0]),
                  spacing=SPACING, sources=(), frames=(None,) * SHAPE[0], stack=(),
                  metadata={"Modality": modality, "SeriesInstanceUID": "1.2.3"})


def _lps(volume: Volume, value: int) -> np.ndarray:
    kji = np.array([value // 10000, value // 100 % 100, value % 100, 1.0])
    return (volume.affine @ kji)[:3]


# (row cosines, column cosines): axial as usual, rows and columns stored the other way,
# slices running head to feet, coronal, sagittal, and an oblique axial
STORED = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "axial, rows from the back": ((1, 0, 0), (0, -1, 0)),
    "axial, columns from the left": ((-1, 0, 0), (0, 1, 0)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "oblique axial": ((0.9848, 0.1736, 0), (-0.1736, 0.9848, 0)),
}
# plane -> (LPS axis, sign) that must grow to the right and towards the top
WANTED = {"axial": ((0, +1), (1, -1)), "coronal": ((0, +1), (2, +1)),
          "sagittal": ((1, +1), (2, +1))}


@pytest.mark.parametrize("stored", STORED)
def test_every_panel_is_upright_whatever_the_stored_order(stored):
    volume = _volume(*STORED[stored])
    figure = volume.plot(orthogonal=True)
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 3
    planes = []
    for ax in panels:
        shown = np.asarray(ax.images[0].get_array())
        plane = ax.get_title().split()[0]
        planes.append(plane)
        (across, a_sign), (up, u_sign) = WANTED[plane]
        middle_row, middle_col = shown.shape[0] // 2, shown.shape[1] // 2
        left, right = _lps(volume, shown[middle_row, 0]), _lps(volume, shown[middle_row, -1])
        top, bottom = _lps(volume, shown[0, middle_col]), _lps(volume, shown[-1, middle_col])
        assert (right[across] - left[across]) * a_sign > 0, (stored, plane, "left/right")
        assert (top[up] - bottom[up]) * u_sign > 0, (stored, plane, "up/down")
        letters = sorted(t.get_text() for t in ax.texts)
        assert len(letters) == 4
    assert sorted(planes) == ["axial", "coronal", "sagittal"]


def test_the_slice_panel_is_the_stored_slice_and_pixels_keep_their_aspect():
    volume = _volume(*STORED["axial"])
    figure = volume.plot(3)
    ax = figure.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), volume.array[3])
    assert ax.get_aspect() == pytest.approx(SPACING[1] / SPACING[2])
    assert "axial (z = 3)" == ax.get_title()


def test_windows_by_modality_and_by_name():
    ct = _volume(*STORED["axial"])
    assert ct.plot().axes[0].images[0].get_clim() == (-160.0, 240.0)  # soft tissue, HU
    assert ct.plot(window="lung").axes[0].images[0].get_clim() == (-1350.0, 150.0)
    assert ct.plot(window=(0, 100)).axes[0].images[0].get_clim() == (-50.0, 50.0)
    mr = _volume(*STORED["axial"], modality="MR")
    low, high = mr.plot(2).axes[0].images[0].get_clim()
    shown = mr.array[2]
    assert (low, high) == tuple(np.percentile(shown, [1, 99]))
    dose = _volume(*STORED["axial"], modality="RTDOSE")
    assert dose.plot(2).axes[0].images[0].get_clim() == (0.0, float(dose.array[2].max()))
    with pytest.raises(ValueError, match="window"):
        ct.plot(window="liver-ish")
    with pytest.raises(IndexError, match="axis z"):
        ct.plot(99)


def test_segmentation_outlines_sit_on_the_mask():
    volume = _volume(*STORED["axial, rows from the back"])
    masks = np.zeros((2, *SHAPE), bool)
    masks[0, 2:5, 1:4, 6:10] = True
    masks[1, 3, 6:8, 1:3] = True
    seg = Segmentation(image=volume, masks=masks, segments=pd.DataFrame(
        {"number": [1, 2], "label": ["tumour", "node"]}), metadata={})
    figure = seg.plot(3, orthogonal=True)
    axial = figure.axes[0]
    assert [t.get_text() for t in axial.get_legend().get_texts()] == ["tumour", "node"]
    shown = np.asarray(axial.images[0].get_array())
    for s, contour in enumerate(c for c in axial.collections if hasattr(c, "get_paths")):
        vertices = np.concatenate([p.vertices for p in contour.get_paths()])
        rows, cols = vertices[:, 1].round().astype(int), vertices[:, 0].round().astype(int)
        # each outline vertex lies between a voxel of the mask and one outside, in the picture
        values = {int(shown[r, c]) for r, c in zip(rows.clip(0, SHAPE[1] - 1),
                                                     cols.clip(0, SHAPE[2] - 1), strict=True)}
        kji = {(v // 10000, v // 100 % 100, v % 100) for v in values}
        near = [masks[s][k, max(j - 1, 0):j + 2, max(i - 1, 0):i + 2].any() for k, j, i in kji]
        assert all(near), s
    with pytest.raises(ValueError, match=r"no segment\(s\) \[7\]"):
        seg.plot(segments=[7])
    only = seg.plot(segments=[2])
    assert [t.get_text() for t in only.axes[0].get_legend().get_texts()] == ["node"]


def test_the_slider_redraws_the_slice_it_is_moved_to():
    pytest.importorskip("ipywidgets")
    volume = _volume(*STORED["axial"])
    box = volume.plot(slider=True)
    slider = box.children[0]
    assert (slider.min, slider.max, slider.value) == (0, SHAPE[0] - 1, SHAPE[0] // 2)
    slider.value = 5
    np.testing.assert_array_equal(box.figure.axes[0].images[0].get_array(), volume.array[5])


def test_without_matplotlib_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MissingDependencyError, match=r"intake-tcia\[plot\]"):
        _volume(*STORED["axial"]).plot()


def test_xarray_plot_of_a_slice_is_upright_with_hu_on_the_colour_bar():
    pytest.importorskip("xarray")
    volume = _volume(*STORED["axial"])
    da = to_xarray(volume)
    assert da.attrs["units"] == "HU" and da.attrs["long_name"] == "CT number"
    assert np.all(np.diff(da.y.values) < 0)  # counts up the image: row 0 on top
    ax = plt.figure().gca()
    da.isel(z=3).plot(ax=ax)
    low, high = ax.get_ylim()
    assert low < high  # y grows upward, so row 0 (the largest y) is drawn on top
    top_row_value = float(da.isel(z=3).sel(y=high, method="nearest").mean())
    assert _lps(volume, int(da.isel(z=3, y=0, x=0)))[1] < _lps(volume, int(da.isel(z=3, y=-1,
                                                                                  x=0)))[1]
    assert top_row_value == float(da.isel(z=3, y=0).mean())  # anterior row drawn at the top
    colour_bar = ax.figure.axes[-1]
    assert colour_bar.get_ylabel() == "CT number [HU]"
    assert "units" not in to_xarray(_volume(*STORED["axial"], modality="MR")).attrs
    assert to_xarray(_volume(*STORED["axial"], modality="RTDOSE")).attrs["units"] == "Gy"

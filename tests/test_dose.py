"""Tests of intake_tcia.dose on pydicom's rtdose.dcm: both forms of Grid Frame Offset Vector.

pydicom's file has ImagePositionPatient z = -761.87 mm, axial orientation, 15 frames 5 mm apart
and relative offsets (0, 5, ..., 70). PS3.3 C.8.8.3.2 places frame k at z = -761.87 + 5 k
whichever form the offsets take; the absolute form lists those z values themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from intake_tcia.dose import read_dose
from intake_tcia.volume import VolumeGeometryError, volume_from_files

FIRST_Z = -761.87
EXPECTED_Z = FIRST_Z + 5.0 * np.arange(15)


@pytest.fixture()
def rtdose() -> pydicom.Dataset:
    path = get_testdata_file("rtdose.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's rtdose.dcm is not installed")
    return pydicom.dcmread(path)


def _expected_dose(ds: pydicom.Dataset) -> np.ndarray:
    """Stored values x DoseGridScaling, frames sorted by their z (independent of the reader)."""
    z = np.asarray(ds.ImagePositionPatient, float)[2] + np.asarray(
        ds.GridFrameOffsetVector, float)
    if float(ds.GridFrameOffsetVector[0]) != 0.0:
        z = np.asarray(ds.GridFrameOffsetVector, float)
    return (ds.pixel_array * float(ds.DoseGridScaling))[np.argsort(z)]


def test_relative_offsets_start_at_image_position(rtdose: pydicom.Dataset, tmp_path: Path
                                                  ) -> None:
    assert float(rtdose.GridFrameOffsetVector[0]) == 0.0
    rtdose.save_as(tmp_path / "dose.dcm")
    dose = read_dose(tmp_path / "dose.dcm")
    np.testing.assert_allclose(dose.positions, EXPECTED_Z, atol=1e-6)
    np.testing.assert_allclose(dose.affine @ [14, 2, 3, 1],
                               [189.43125 + 3 * 10, 199.43125 + 2 * 10, FIRST_Z + 70, 1])
    np.testing.assert_allclose(dose.array, _expected_dose(rtdose), rtol=1e-6)
    assert dose.dtype == np.float32
    assert dose.metadata["DoseUnits"] == "RELATIVE"


def test_absolute_offsets_are_z_values(rtdose: pydicom.Dataset, tmp_path: Path) -> None:
    rtdose.GridFrameOffsetVector = [round(float(z), 2) for z in EXPECTED_Z]
    rtdose.DoseUnits = "GY"
    rtdose.save_as(tmp_path / "dose.dcm")
    dose = read_dose(tmp_path / "dose.dcm")
    np.testing.assert_allclose(dose.positions, EXPECTED_Z, atol=1e-6)
    np.testing.assert_allclose(dose.origin, [189.43125, 199.43125, FIRST_Z])
    assert dose.spacing == pytest.approx((5.0, 10.0, 10.0))
    np.testing.assert_allclose(dose.array, _expected_dose(rtdose), rtol=1e-6)
    assert dose.metadata["DoseUnits"] == "GY"


def test_absolute_offsets_in_descending_order(rtdose: pydicom.Dataset, tmp_path: Path) -> None:
    rtdose.ImagePositionPatient = [189.43125, 199.43125, float(EXPECTED_Z[-1])]
    rtdose.GridFrameOffsetVector = [round(float(z), 2) for z in EXPECTED_Z[::-1]]
    rtdose.save_as(tmp_path / "dose.dcm")
    dose = read_dose(tmp_path / "dose.dcm")
    np.testing.assert_allclose(dose.positions, EXPECTED_Z, atol=1e-6)
    np.testing.assert_allclose(dose.array, _expected_dose(rtdose), rtol=1e-6)


def test_relative_offsets_follow_an_oblique_normal(rtdose: pydicom.Dataset, tmp_path: Path
                                                   ) -> None:
    c = np.cos(np.radians(30.0))
    s = np.sin(np.radians(30.0))
    rtdose.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, c, s]
    rtdose.save_as(tmp_path / "dose.dcm")
    dose = read_dose(tmp_path / "dose.dcm")
    normal = np.cross([1.0, 0.0, 0.0], [0.0, c, s])
    np.testing.assert_allclose(dose.affine @ [4, 0, 0, 1],
                               [*(np.asarray(rtdose.ImagePositionPatient, float)
                                  + 20.0 * normal), 1], atol=1e-6)


def test_dose_grid_scaling_applies_through_volume_from_files(rtdose: pydicom.Dataset,
                                                             tmp_path: Path) -> None:
    rtdose.save_as(tmp_path / "dose.dcm")
    volume = volume_from_files([tmp_path / "dose.dcm"])
    assert volume.array.max() == pytest.approx(float(rtdose.pixel_array.max()) * 1e-6)


def test_not_a_dose_is_an_error(tmp_path: Path) -> None:
    path = get_testdata_file("CT_small.dcm", download=False)
    with pytest.raises(VolumeGeometryError, match="not an RT Dose.*'CT'"):
        read_dose(path)

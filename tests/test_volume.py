"""Tests of intake_tcia.volume on synthetic series of known geometry and on pydicom's files.

Geometry is checked against an independent computation from each slice's own attributes:
voxel ``(j, i)`` of a slice lies at ImagePositionPatient + j * dy * c + i * dx * r (PS3.3
C.7.6.2.1.1), so ``affine @ [k, j, i, 1]`` must give that point for the k-th sorted slice.
"""

from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from intake_tcia.errors import MissingDependencyError, TCIAError
from intake_tcia.volume import (
    Volume,
    VolumeGeometryError,
    VolumeGeometryWarning,
    sort_slices_by_position,
    split_stacks,
    to_dask,
    to_xarray,
    volume_from_datasets,
    volume_from_files,
)

ROOT = Path(__file__).resolve().parents[1]
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ROWS, COLS = 5, 4
PIXEL_SPACING = (0.7, 0.9)  # (between rows, between columns), mm


def _testdata(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return str(path)


def _dicomdir_series(folder: str) -> list[str]:
    ct = Path(_testdata("CT_small.dcm")).parent / "dicomdirtests" / folder
    return sorted(str(p) for p in ct.iterdir())


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Rodrigues' rotation matrix."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _oblique(degrees: float = 30.0) -> tuple[float, ...]:
    rot = _rotation((1.0, 2.0, 0.5), degrees)
    return tuple(round(float(v), 8) for v in (*rot[:, 0], *rot[:, 1]))


def _base(series_uid: str, sop_class: str = CTImageStorage) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "P-1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def _pattern(k: int) -> np.ndarray:
    """Pixels telling slice k apart: 100 k + 10 j + i."""
    j, i = np.mgrid[:ROWS, :COLS]
    return (100 * k + 10 * j + i).astype(np.int16)


def make_series(
    n: int = 6,
    *,
    spacing: float = 2.5,
    origin: tuple[float, float, float] = (-10.0, 20.0, 30.0),
    orientation: tuple[float, ...] = AXIAL,
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
    skip: tuple[int, ...] = (),
    descending_instances: bool = False,
    series_uid: str = "1.2.3.4.5",
    value_offset: int = 0,
    **attrs: object,
) -> list[Dataset]:
    """Slices k = 0..n-1 at origin + k (spacing n + shift), in order of k (shuffle them yourself).

    Pixel values are ``_pattern(k) + value_offset``; ``skip`` leaves slices out (a gap).
    """
    normal = np.cross(orientation[:3], orientation[3:])
    out = []
    for k in range(n):
        if k in skip:
            continue
        ds = _base(series_uid)
        ds.ImagePositionPatient = [
            round(float(v), 6) for v in np.add(origin, k * (spacing * normal + np.asarray(shift)))
        ]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = spacing
        ds.InstanceNumber = n - k if descending_instances else k + 1
        ds.PixelData = (_pattern(k) + value_offset).astype("<i2").tobytes()
        for name, value in attrs.items():
            setattr(ds, name, value)
        out.append(ds)
    return out


def shuffled(items: list, seed: int = 0) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def write(folder: Path, datasets: list[Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets):
        path = folder / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def voxel_position(ds: Dataset, j: int, i: int) -> np.ndarray:
    """Independent DICOM formula: IPP + j * dy * column cosine + i * dx * row cosine."""
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    return np.asarray(ds.ImagePositionPatient, float) + j * dy * iop[3:] + i * dx * iop[:3]


def assert_affine_matches(volume: Volume, datasets: list[Dataset]) -> None:
    """Every corner of every slice maps to the position its own attributes give."""
    for k, ds in enumerate(datasets):
        for j, i in [(0, 0), (ROWS - 1, 0), (0, COLS - 1), (ROWS - 1, COLS - 1), (2, 1)]:
            got = volume.affine @ np.array([k, j, i, 1.0])
            np.testing.assert_allclose(got[:3], voxel_position(ds, j, i), atol=1e-5)


# -- sorting and geometry ----------------------------------------------------------------------


def test_shuffled_axial_series_is_sorted_with_exact_geometry() -> None:
    series = make_series(6)
    volume = volume_from_datasets(shuffled(series))
    assert volume.shape == (6, ROWS, COLS)
    assert volume.dtype == np.int16
    assert [ds.InstanceNumber for ds in volume.sources] == [1, 2, 3, 4, 5, 6]
    for k in range(6):
        np.testing.assert_array_equal(volume.array[k], _pattern(k))
    np.testing.assert_allclose(volume.positions, 30.0 + 2.5 * np.arange(6))
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.9))
    np.testing.assert_allclose(volume.origin, [-10.0, 20.0, 30.0])
    np.testing.assert_allclose(volume.direction, [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=1e-12)
    assert_affine_matches(volume, series)
    assert volume.metadata == {"Modality": "CT", "PatientID": "P-1", "StudyInstanceUID": "1.2.3.4",
                               "SeriesInstanceUID": "1.2.3.4.5"}


def test_repr_is_short_and_names_shape_spacing_dtype_and_series() -> None:
    volume = volume_from_datasets(make_series(6, spacing=2.5))
    text = repr(volume)
    assert text == ("Volume(CT, shape=(6, 5, 4), spacing=(2.5, 0.7, 0.9) mm, dtype=int16, "
                    "series=1.2.3.4.5)")


def test_negative_spacing_and_reversed_instance_numbers_sort_ascending() -> None:
    # Slices generated moving *against* the normal, numbered the other way round.
    series = make_series(5, spacing=-3.0, descending_instances=True)
    volume = volume_from_datasets(shuffled(series, seed=3))
    expected = series[::-1]  # ascending along the normal
    assert [ds.SOPInstanceUID for ds in volume.sources] == [ds.SOPInstanceUID for ds in expected]
    assert np.all(np.diff(volume.positions) > 0)
    assert volume.spacing[0] == pytest.approx(3.0)
    assert_affine_matches(volume, expected)
    for k, ds in enumerate(expected):
        np.testing.assert_array_equal(volume.array[k], ds.pixel_array)


def test_oblique_series_is_allowed_and_affine_carries_it() -> None:
    orientation = _oblique(30.0)
    series = make_series(5, spacing=1.5, orientation=orientation)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        volume = volume_from_datasets(shuffled(series, seed=1))
    assert_affine_matches(volume, series)
    normal = np.cross(orientation[:3], orientation[3:])
    along = [np.dot(ds.ImagePositionPatient, normal) for ds in series]
    np.testing.assert_allclose(volume.positions, along, atol=1e-5)
    np.testing.assert_allclose(volume.direction[:, 0], normal, atol=1e-6)


def test_gantry_tilt_raises_unless_allowed_then_affine_is_sheared() -> None:
    series = make_series(5, spacing=2.0, shift=(0.0, 0.35, 0.0))  # ~10 degrees
    with pytest.raises(VolumeGeometryError, match="gantry tilt"):
        volume_from_datasets(series)
    volume = volume_from_datasets(shuffled(series), allow_tilt=True)
    assert_affine_matches(volume, series)
    np.testing.assert_allclose(volume.positions, 30.0 + 2.0 * np.arange(5))
    assert volume.spacing[0] == pytest.approx(np.hypot(2.0, 0.35))


def test_missing_slice_raises_with_the_gap_and_rtol_inf_stacks_anyway() -> None:
    series = make_series(6, skip=(3,))
    with pytest.raises(VolumeGeometryError, match=r"not uniform.*5 mm between positions 35"):
        volume_from_datasets(series)
    volume = volume_from_datasets(shuffled(series), rtol=float("inf"))
    np.testing.assert_allclose(volume.positions, [30.0, 32.5, 35.0, 40.0, 42.5])
    assert volume.spacing[0] == pytest.approx(12.5 / 4)


def test_spacing_within_rtol_is_accepted() -> None:
    series = make_series(4)
    series[2].ImagePositionPatient = [-10.0, 20.0, 35.02]  # 0.8 % off
    assert volume_from_datasets(series).shape[0] == 4
    with pytest.raises(VolumeGeometryError):
        volume_from_datasets(series, rtol=0.001)


def test_geometry_error_is_a_tcia_error_and_a_value_error() -> None:
    assert issubclass(VolumeGeometryError, TCIAError)
    assert issubclass(VolumeGeometryError, ValueError)


def test_mismatched_shape_and_orientation_raise() -> None:
    series = make_series(3)
    series[1].Rows = ROWS + 1
    series[1].PixelData = np.zeros((ROWS + 1, COLS), "<i2").tobytes()
    with pytest.raises(VolumeGeometryError, match="rows, columns"):
        volume_from_datasets(series)
    series = make_series(3)
    series[2].ImageOrientationPatient = list(_oblique(20.0))
    with pytest.raises(VolumeGeometryError, match="ImageOrientationPatient"):
        volume_from_datasets(series)


def test_missing_geometry_falls_back_to_instance_number() -> None:
    series = make_series(4, descending_instances=True)
    for ds in series:
        del ds.ImagePositionPatient
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ordered = sort_slices_by_position(shuffled(series))  # no warning here
    assert [ds.InstanceNumber for ds in ordered] == [1, 2, 3, 4]
    with pytest.warns(VolumeGeometryWarning, match="InstanceNumber"):
        volume = volume_from_datasets(shuffled(series))
    np.testing.assert_array_equal(volume.array[0], _pattern(3))  # InstanceNumber 1 is k=3
    np.testing.assert_allclose(volume.affine[:3, 3], 0.0)
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.9))


def test_sort_slices_works_on_header_only_datasets(tmp_path: Path) -> None:
    series = make_series(5, orientation=_oblique(50.0), descending_instances=True)
    paths = write(tmp_path, shuffled(series))
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    ordered = sort_slices_by_position(heads)
    assert [ds.SOPInstanceUID for ds in ordered] == [ds.SOPInstanceUID for ds in series]
    assert all("PixelData" not in ds for ds in ordered)


# -- stacks ----------------------------------------------------------------------------------------


def test_two_echoes_are_split_not_interleaved() -> None:
    first = make_series(4, EchoNumbers=1, AcquisitionNumber=1)
    second = make_series(4, EchoNumbers=2, AcquisitionNumber=1, value_offset=1000)
    mixed = shuffled(first + second)
    stacks = split_stacks(mixed)
    assert list(stacks) == [(("EchoNumbers", 1),), (("EchoNumbers", 2),)]
    assert stacks[(("EchoNumbers", 2),)] == second
    with pytest.raises(VolumeGeometryError, match=r"2 stacks.*EchoNumbers.*stack="):
        volume_from_datasets(mixed)
    volume = volume_from_datasets(mixed, stack=(("EchoNumbers", 2),))
    assert volume.stack == (("EchoNumbers", 2),)
    np.testing.assert_array_equal(volume.array[1], _pattern(1) + 1000)
    np.testing.assert_array_equal(volume_from_datasets(mixed, stack=0).array[2], _pattern(2))
    with pytest.raises(VolumeGeometryError, match="no stack"):
        volume_from_datasets(mixed, stack=5)


def test_stacks_differing_only_in_orientation_are_split() -> None:
    axial = make_series(3, series_uid="1.2.3.4.9")
    oblique = make_series(4, orientation=_oblique(40.0), series_uid="1.2.3.4.9", value_offset=7)
    stacks = split_stacks(shuffled(axial + oblique))
    assert len(stacks) == 2
    by_count = {len(v): k for k, v in stacks.items()}
    assert stacks[by_count[3]] == axial and stacks[by_count[4]] == oblique
    assert by_count[3] == (("ImageOrientationPatient", AXIAL),)
    assert by_count[4][0][0] == "ImageOrientationPatient"
    np.testing.assert_allclose(by_count[4][0][1], _oblique(40.0), atol=1e-4)
    with pytest.raises(VolumeGeometryError, match=r"2 stacks \(slices in 2 orientations\)"):
        volume_from_datasets(axial + oblique)
    for ds in axial:  # one orientation, no positions: still one stack, keyed ()
        del ds.ImagePositionPatient
    assert list(split_stacks(axial)) == [()]
    volume = volume_from_datasets(shuffled(axial + oblique), stack=by_count[4])
    np.testing.assert_array_equal(volume.array[3], _pattern(3) + 7)
    np.testing.assert_allclose(volume.direction[:, 2], _oblique(40.0)[:3], atol=1e-6)


def test_temporal_positions_win_over_a_varying_acquisition_number() -> None:
    first = make_series(3, TemporalPositionIdentifier=1)
    second = make_series(3, TemporalPositionIdentifier=2, value_offset=500)
    for n, ds in enumerate(first + second):
        ds.AcquisitionNumber = n  # varies slice by slice, as on many CT scanners
    stacks = split_stacks(first + second)
    assert list(stacks) == [(("TemporalPositionIdentifier", 1),),
                            (("TemporalPositionIdentifier", 2),)]


def test_varying_acquisition_number_alone_does_not_split() -> None:
    series = make_series(4)
    for n, ds in enumerate(series):
        ds.AcquisitionNumber = n // 2
    assert list(split_stacks(series)) == [()]
    assert volume_from_datasets(series, stack=()).shape[0] == 4


def test_duplicate_positions_without_attributes_are_reported() -> None:
    series = make_series(3) + make_series(3, value_offset=50)
    for n, ds in enumerate(series):
        ds.InstanceNumber = n + 1
    assert list(split_stacks(series)) == [(("Repeat", 0),), (("Repeat", 1),)]
    with pytest.raises(VolumeGeometryError, match="positions repeat"):
        volume_from_datasets(series)
    volume = volume_from_datasets(shuffled(series), stack=1)
    np.testing.assert_array_equal(volume.array[0], _pattern(0) + 50)


# -- rescale -------------------------------------------------------------------------------------


def test_integral_rescale_keeps_an_integer_dtype() -> None:
    series = make_series(3, RescaleSlope=1, RescaleIntercept=-1024, BitsStored=12, HighBit=11)
    volume = volume_from_datasets(series)
    assert volume.dtype == np.int16
    np.testing.assert_array_equal(volume.array[2], _pattern(2).astype(int) - 1024)


def test_wide_integral_rescale_widens_the_dtype() -> None:
    volume = volume_from_datasets(make_series(2, RescaleSlope=2, RescaleIntercept=-1024))
    assert volume.dtype == np.int32
    np.testing.assert_array_equal(volume.array[1], 2 * _pattern(1).astype(int) - 1024)


def test_fractional_per_slice_rescale_gives_float32() -> None:
    series = make_series(3, RescaleIntercept=0.5)
    for k, ds in enumerate(series):
        ds.RescaleSlope = 0.25 * (k + 1)  # per-slice slopes, as in PET
    volume = volume_from_datasets(shuffled(series))
    assert volume.dtype == np.float32
    for k in range(3):
        np.testing.assert_allclose(volume.array[k], _pattern(k) * 0.25 * (k + 1) + 0.5, rtol=1e-6)


# -- multi-frame ---------------------------------------------------------------------------------


def make_enhanced(n: int = 4, *, spacing: float = 2.0) -> tuple[Dataset, list[tuple[int, int]]]:
    """An enhanced CT with two temporal positions of n frames, stored in shuffled order.

    Returns the dataset and, per stored frame, its (temporal position, k).
    """
    orientation = _oblique(25.0)
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([5.0, -7.0, 12.0])
    order = shuffled([(t, k) for t in (1, 2) for k in range(n)], seed=7)
    ds = _base("1.2.3.4.9", EnhancedCTImageStorage)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = list(orientation)
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = list(PIXEL_SPACING)
    shared.PixelMeasuresSequence[0].SliceThickness = spacing
    shared.PixelValueTransformationSequence = Sequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1
    shared.PixelValueTransformationSequence[0].RescaleIntercept = -100
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for t, k in order:
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [
            round(float(v), 6) for v in origin + k * spacing * normal
        ]
        item.FrameContentSequence = Sequence([Dataset()])
        item.FrameContentSequence[0].TemporalPositionIndex = t
        item.FrameContentSequence[0].StackID = "1"
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack([_pattern(k) + 1000 * t for t, k in order]).astype("<i2").tobytes()
    return ds, order


def _frame_dataset(ds: Dataset, frame: int) -> Dataset:
    """A stand-in single-frame dataset carrying one frame's geometry, for voxel_position."""
    out = Dataset()
    out.ImageOrientationPatient = (
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient)
    out.PixelSpacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    out.ImagePositionPatient = (
        ds.PerFrameFunctionalGroupsSequence[frame].PlanePositionSequence[0].ImagePositionPatient)
    return out


@pytest.mark.parametrize("from_files", [False, True])
def test_enhanced_multiframe_per_frame_geometry(tmp_path: Path, from_files: bool) -> None:
    ds, order = make_enhanced(4)
    stacks = split_stacks([ds])
    assert list(stacks) == [(("TemporalPositionIndex", 1),), (("TemporalPositionIndex", 2),)]
    if from_files:
        paths = write(tmp_path, [ds])
        volume = volume_from_files(paths, stack=1)
        assert volume.sources == (str(paths[0]),) * 4
    else:
        volume = volume_from_datasets([ds], stack=(("TemporalPositionIndex", 2),))
    assert volume.frames == tuple(order.index((2, k)) for k in range(4))
    for k in range(4):
        np.testing.assert_array_equal(volume.array[k], _pattern(k) + 2000 - 100)
    assert_affine_matches(volume, [_frame_dataset(ds, f) for f in volume.frames])
    assert volume.spacing == pytest.approx((2.0, 0.7, 0.9))


def test_rt_dose_grid_frame_offsets() -> None:
    ds = pydicom.dcmread(_testdata("rtdose.dcm"))
    volume = volume_from_datasets([ds])
    offsets = np.asarray(ds.GridFrameOffsetVector, float)
    assert volume.shape == (int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    np.testing.assert_allclose(volume.positions - volume.positions[0],
                               np.sort(offsets) - offsets.min(), atol=1e-6)
    assert volume.spacing[0] == pytest.approx(5.0)
    # Stored values times DoseGridScaling: dose (design.md: RTDOSE reads in Gy).
    np.testing.assert_allclose(volume.array, ds.pixel_array[np.argsort(offsets)]
                               * float(ds.DoseGridScaling), rtol=1e-6)


# -- files, lazy, xarray ---------------------------------------------------------------------------


def test_files_eager_and_lazy_agree_and_lazy_reads_on_compute(tmp_path: Path) -> None:
    series = make_series(5, orientation=_oblique(10.0), RescaleIntercept=-1000, RescaleSlope=1)
    paths = write(tmp_path, shuffled(series))
    eager = volume_from_files(paths)
    lazy = volume_from_files(paths, lazy=True)
    assert lazy.array.chunks == ((1,) * 5, (ROWS,), (COLS,))
    assert lazy.dtype == eager.dtype
    np.testing.assert_array_equal(lazy.array.compute(), eager.array)
    np.testing.assert_array_equal(to_dask(paths).compute(), eager.array)
    np.testing.assert_array_equal(lazy.array[3, 1:, ::2].compute(), eager.array[3, 1:, ::2])
    assert_affine_matches(eager, series)
    # The slice at k=2 is read from its file only when computed.
    target = eager.sources[2]
    ds = pydicom.dcmread(target)
    ds.PixelData = np.full((ROWS, COLS), 7, "<i2").tobytes()
    ds.save_as(target)
    np.testing.assert_array_equal(lazy.array[2].compute(), np.full((ROWS, COLS), 7 - 1000))
    roundtrip = pickle.loads(pickle.dumps(lazy.array))
    np.testing.assert_array_equal(roundtrip[2].compute(), lazy.array[2].compute())


def test_to_xarray_coordinates_and_attrs(tmp_path: Path) -> None:
    pytest.importorskip("xarray")
    series = make_series(4, origin=(-50.0, -60.0, -70.0))
    volume = volume_from_datasets(shuffled(series))
    da = to_xarray(volume, attrs={"DOI": "10.7937/x", "license": "CC BY 4.0"})
    assert da.dims == ("z", "y", "x")
    np.testing.assert_allclose(da.z, [-70.0, -67.5, -65.0, -62.5])
    np.testing.assert_allclose(da.y, 60.0 - 0.7 * np.arange(ROWS))  # counts up the image
    np.testing.assert_allclose(da.x, -50.0 + 0.9 * np.arange(COLS))
    assert da.z.attrs["units"] == "mm"
    assert da.attrs["SeriesInstanceUID"] == "1.2.3.4.5"
    assert da.name == "CT"  # a plot label, not the UID (these slices have no description)
    assert da.attrs["Modality"] == "CT" and da.attrs["PatientID"] == "P-1"
    assert da.attrs["DOI"] == "10.7937/x" and da.attrs["license"] == "CC BY 4.0"
    np.testing.assert_allclose(da.attrs["affine"], volume.affine)
    json.dumps(da.attrs)
    # the voxel at (z, y, x) coordinates holds the pixel that the DICOM formula puts there
    assert int(da.sel(z=-65.0, y=60.0 - 1.4, x=-50.0 + 2.7, method="nearest")) == 100 * 2 + 23
    lazy = to_xarray(volume_from_files(write(tmp_path, series), lazy=True))
    assert lazy.chunks == ((1,) * 4, (ROWS,), (COLS,))
    np.testing.assert_array_equal(lazy.values, da.values)


# -- pydicom's real files --------------------------------------------------------------------------


def test_real_ct_series_sorted_with_affine_from_positions() -> None:
    paths = _dicomdir_series("98892001/CT5N")
    heads = [pydicom.dcmread(p) for p in paths]
    volume = volume_from_files(paths)
    ordered = sorted(heads, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert [Path(p).name for p in volume.sources] == [Path(ds.filename).name for ds in ordered]
    assert volume.spacing[0] == pytest.approx(2.5)
    for k, ds in enumerate(ordered):
        np.testing.assert_allclose(volume.affine @ [k, 0, 0, 1], [*ds.ImagePositionPatient, 1],
                                   atol=1e-4)
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[k], ds.pixel_array * slope + intercept)
    np.testing.assert_array_equal(volume_from_datasets(heads).array, volume.array)


def test_real_ct_series_with_a_gap_is_reported() -> None:
    paths = _dicomdir_series("77654033/CT2")
    with pytest.raises(VolumeGeometryError, match="not uniform"):
        volume_from_files(paths)
    volume = volume_from_files(paths, rtol=float("inf"))
    np.testing.assert_allclose(volume.positions, [-99.48, 103.02, 104.27, 105.52], atol=1e-4)


def test_real_mr_with_rotating_orientations_is_rejected() -> None:
    with pytest.raises(VolumeGeometryError, match="7 orientations"):
        volume_from_files(_dicomdir_series("98892003/MR700"))


def test_real_series_without_geometry_sorts_by_instance_number() -> None:
    paths = _dicomdir_series("TINY_ALPHA/PT000000/ST000000/SE000000")
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in reversed(paths)]
    assert [int(ds.InstanceNumber) for ds in sort_slices_by_position(heads)] == list(range(50))


def test_ct_small_in_hounsfield_units() -> None:
    path = _testdata("CT_small.dcm")
    ds = pydicom.dcmread(path)
    volume = volume_from_files([path])
    np.testing.assert_array_equal(volume.array[0], ds.pixel_array.astype(int) - 1024)
    np.testing.assert_allclose(volume.affine @ [0, 3, 2, 1], [*voxel_position(ds, 3, 2), 1])


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"])
def test_compressed_mr_decodes_like_the_uncompressed_file(name: str) -> None:
    plain = volume_from_files([_testdata("MR_small.dcm")])
    packed = volume_from_files([_testdata(name)])
    assert pydicom.dcmread(_testdata(name)).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(packed.array, plain.array)
    np.testing.assert_array_equal(packed.affine, plain.affine)


def test_missing_decoder_names_the_extra() -> None:
    code = (
        "import sys\n"
        "for name in ('pylibjpeg', 'openjpeg', 'libjpeg', 'rle', 'PIL', 'gdcm', 'jpeg_ls'):\n"
        "    sys.modules[name] = None\n"
        "from intake_tcia.errors import MissingDependencyError\n"
        "from intake_tcia.volume import volume_from_files\n"
        "try:\n"
        "    volume_from_files([sys.argv[1]])\n"
        "except MissingDependencyError as exc:\n"
        "    print('MISSING:', exc)\n"
    )
    path = _testdata("MR_small_jp2klossless.dcm")
    done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, timeout=60, check=True)
    assert "MISSING:" in done.stdout
    assert "pip install 'intake-tcia[jpeg]'" in done.stdout
    assert issubclass(MissingDependencyError, ImportError)


# -- distributed ---------------------------------------------------------------------------------


def test_distributed_reduction_over_lazy_volumes(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    folders = [
        write(tmp_path / f"s{n}", shuffled(make_series(3 + n, series_uid=f"1.2.3.{n}",
                                                       RescaleIntercept=-10 * n, RescaleSlope=1)))
        for n in range(3)
    ]
    lazy = [volume_from_files(paths, lazy=True).array for paths in folders]
    expected = [int(volume_from_files(paths).array.astype(np.int64).sum()) for paths in folders]
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=":0", silence_logs=40) as cluster,
        distributed.Client(cluster) as client,
    ):
        totals = client.compute([a.astype(np.int64).sum() for a in lazy], sync=True)
        workers = client.run(lambda: __import__("os").getpid())
    assert [int(t) for t in totals] == expected
    assert len(set(workers.values())) == 2

"""Tests of intake_tcia.segmentation: masks against known truth, highdicom and skimage.

Truth comes from how the annotations were made (intake_tcia.testing._annotations computes every
point from the image datasets' own attributes, not through intake_tcia.volume): the sample
archive's SEG and RTSTRUCT on its axial CT, and here an oblique series made on the spot. SEG
masks are also compared with highdicom's own decoding, RTSTRUCT masks with skimage's polygon
fill of the same contours.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pack_bits

from intake_tcia.client import TCIAClient
from intake_tcia.segmentation import SegmentationError, read_segmentation
from intake_tcia.testing import SampleArchive
from intake_tcia.testing._annotations import (
    Contour,
    make_rtstruct,
    make_seg,
    pixel_to_patient,
)
from intake_tcia.volume import volume_from_datasets

hd = pytest.importorskip("highdicom")
skimage_draw = pytest.importorskip("skimage.draw")


def _archive_uid(archive: SampleArchive, modality: str) -> str:
    table = archive.series
    rows = table[(table["Collection"] == "Pydicom-CT-Series") & (table["Modality"] == modality)]
    return str(rows["SeriesInstanceUID"].iloc[0])


def _files(archive: SampleArchive, uid: str) -> list[Path]:
    return [path for _, path in archive.instances(uid)]


@pytest.fixture(scope="module")
def archive() -> SampleArchive:
    return SampleArchive.default()


@pytest.fixture(scope="module")
def ct_files(archive: SampleArchive) -> list[Path]:
    return _files(archive, _archive_uid(archive, "CT"))


# -- an oblique series made here -------------------------------------------------------------------


def _oblique_series(n: int = 6, rows: int = 24, columns: int = 20) -> list[pydicom.Dataset]:
    """CT slices rotated 25 degrees about an oblique axis, anisotropic pixels, 2 mm apart."""
    template = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm", download=False))
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    t = np.radians(25.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
    cosines = [round(float(v), 8) for v in (*rot[:, 0], *rot[:, 1])]
    normal = np.cross(cosines[:3], cosines[3:])
    series_uid = pydicom.uid.generate_uid()
    out = []
    for z in range(n):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.Rows, ds.Columns = rows, columns
        ds.PixelSpacing = [0.8, 1.1]
        ds.ImageOrientationPatient = cosines
        ds.ImagePositionPatient = [round(float(v), 5) for v in
                                   np.array([12.0, -30.0, 40.0]) + 2.0 * z * normal]
        ds.InstanceNumber = n - z
        ds.PixelData = np.full((rows, columns), z, dtype=np.int16).tobytes()
        out.append(ds)
    return out


def _truth(shape: tuple[int, int, int]) -> np.ndarray:
    k, j, i = np.indices(shape)
    first = ((k - 2.5) ** 2 / 4 + (j - 12) ** 2 / 40 + (i - 9) ** 2 / 30) <= 1
    second = (k >= 3) & (j < 8) & (i >= 12)
    return np.stack([first, second])


def test_archive_seg_equals_truth_and_highdicom(archive: SampleArchive, ct_files: list[Path]
                                                ) -> None:
    uid = _archive_uid(archive, "SEG")
    seg = read_segmentation(_files(archive, uid), ct_files)
    truth = archive.annotation_truth(uid)
    assert seg.masks.dtype == bool and seg.masks.shape == truth.shape == (2, *seg.image.shape)
    np.testing.assert_array_equal(seg.masks, truth)
    assert 0 < truth[1].any(axis=(1, 2)).sum() < truth.shape[1]  # frames cover some slices

    decoded = hd.seg.segread(_files(archive, uid)[0])
    sop_in_order = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                    for p in seg.image.sources]
    theirs = decoded.get_pixels_by_source_instance(sop_in_order, segment_numbers=[1, 2])
    np.testing.assert_array_equal(seg.masks, np.moveaxis(theirs, -1, 0).astype(bool))
    assert seg.segments[["number", "label", "property_type"]].values.tolist() == [
        [1, "Ball", "Lung"], [2, "Box", "Neoplasm"]]
    assert seg.segments["voxels"].tolist() == truth.reshape(2, -1).sum(axis=1).tolist()


def test_archive_rtstruct_equals_truth(archive: SampleArchive, ct_files: list[Path]) -> None:
    uid = _archive_uid(archive, "RTSTRUCT")
    seg = read_segmentation(_files(archive, uid), ct_files)
    np.testing.assert_array_equal(seg.masks, archive.annotation_truth(uid))
    assert seg.segments["label"].tolist() == ["Square", "Ring"]
    assert seg.segments["interpreted_type"].tolist() == ["ORGAN", "GTV"]
    ring = seg.masks[1, 6]
    assert ring[66, 66] and not ring[80, 80]  # the ring, and its hole


def test_oblique_seg_with_shuffled_frames_equals_truth(tmp_path: Path) -> None:
    series = _oblique_series()
    truth = _truth((len(series), 24, 20))
    seg_ds = make_seg(series, truth, ["A", "B"], series_uid=pydicom.uid.generate_uid(),
                      sop_uid=pydicom.uid.generate_uid())
    seg_ds.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    shuffled = _shuffle_frames(pydicom.dcmread(tmp_path / "seg.dcm"), seed=3)
    image_order = random.Random(1).sample(series, len(series))
    seg = read_segmentation(shuffled, image_order)
    np.testing.assert_array_equal(seg.masks, truth)
    ordered = read_segmentation(tmp_path / "seg.dcm", series)
    np.testing.assert_array_equal(ordered.masks, truth)


def _shuffle_frames(ds: pydicom.Dataset, seed: int) -> pydicom.Dataset:
    """The same SEG with its frames (pixels and per-frame groups) in a random order."""
    n = int(ds.NumberOfFrames)
    order = random.Random(seed).sample(range(n), n)
    assert order != sorted(order)
    frames = ds.pixel_array.reshape(n, ds.Rows, ds.Columns)[order]
    out = copy.deepcopy(ds)
    out.PerFrameFunctionalGroupsSequence = pydicom.Sequence(
        [ds.PerFrameFunctionalGroupsSequence[m] for m in order])
    out.PixelData = pack_bits(frames)
    for name in ("DimensionIndexSequence", "DimensionOrganizationType"):
        if name in out:
            delattr(out, name)
    for group in out.PerFrameFunctionalGroupsSequence:
        if "FrameContentSequence" in group:
            del group.FrameContentSequence[0].DimensionIndexValues
    return out


def test_fractional_seg_thresholds_at_one_half() -> None:
    series = _oblique_series(n=3)
    k, j, i = np.indices((3, 24, 20))
    fractions = np.stack([np.clip(i / 19.0, 0, 1)])
    seg_ds = make_seg(series, fractions, ["ramp"], series_uid=pydicom.uid.generate_uid(),
                      sop_uid=pydicom.uid.generate_uid(), fractional=True)
    seg = read_segmentation(seg_ds, series)
    stored = np.rint(fractions * 255)  # what the SEG holds, max fractional value 255
    np.testing.assert_array_equal(seg.masks, stored / 255 >= 0.5)
    high = read_segmentation(seg_ds, series, threshold=0.9)
    np.testing.assert_array_equal(high.masks, stored / 255 >= 0.9)


def _skimage_masks(ds: pydicom.Dataset, volume: object) -> np.ndarray:
    """Each ROI filled by skimage.draw.polygon, XOR per slice (the even-odd rule)."""
    inverse = np.linalg.inv(volume.affine)
    out = np.zeros((len(ds.ROIContourSequence), *volume.shape), dtype=bool)
    for s, item in enumerate(ds.ROIContourSequence):
        for contour in item.ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            kji = points @ inverse[:3, :3].T + inverse[:3, 3]
            plane = np.zeros(volume.shape[1:], dtype=bool)
            rr, cc = skimage_draw.polygon(kji[:, 1], kji[:, 2], shape=volume.shape[1:])
            plane[rr, cc] = True
            out[s, int(round(float(kji[0, 0])))] ^= plane
    return out


def test_oblique_rtstruct_agrees_with_skimage_and_truth() -> None:
    series = _oblique_series()
    rng = np.random.default_rng(7)
    rois = []
    for name in ("star", "blob"):
        contours = []
        for source in rng.choice(len(series), size=3, replace=False):
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=9))
            radius = rng.uniform(3.0, 9.0, size=9)
            centre = rng.uniform([8, 7], [16, 13])
            vertices = np.stack([centre[0] + radius * np.sin(angles),
                                 centre[1] + radius * np.cos(angles)], axis=1)
            contours.append(Contour(int(source), tuple(map(tuple, vertices.tolist()))))
        rois.append((name, contours))
    inner = Contour(rois[0][1][0].source, ((10.2, 8.3), (10.3, 11.7), (13.6, 11.4), (13.4, 8.6)))
    rois[0][1].append(inner)  # a hole inside (or an island beside) the star on that slice
    ds = make_rtstruct(series, rois, series_uid=pydicom.uid.generate_uid(),
                       sop_uid=pydicom.uid.generate_uid())
    volume = volume_from_datasets(series)
    seg = read_segmentation(ds, volume)
    assert seg.masks.any(axis=(2, 3)).sum() >= 5
    np.testing.assert_array_equal(seg.masks, _skimage_masks(ds, volume))

    square = Contour(0, ((3.5, 2.5), (3.5, 9.5), (11.5, 9.5), (11.5, 2.5)))
    ds = make_rtstruct(series, [("square", [square])], series_uid=pydicom.uid.generate_uid(),
                       sop_uid=pydicom.uid.generate_uid())
    truth = np.zeros((1, *volume.shape), dtype=bool)
    k = [n for n, src in enumerate(volume.sources) if src is series[0]][0]
    truth[0, k, 4:12, 3:10] = True
    np.testing.assert_array_equal(read_segmentation(ds, series).masks, truth)


def test_holes_by_geometric_type() -> None:
    series = _oblique_series(n=2)
    outer = ((2.5, 2.5), (2.5, 15.5), (20.5, 15.5), (20.5, 2.5))
    inner = ((6.5, 6.5), (6.5, 10.5), (12.5, 10.5), (12.5, 6.5))
    rois = [("union", [Contour(0, outer), Contour(0, inner)]),
            ("xor", [Contour(0, outer, "CLOSEDPLANAR_XOR"), Contour(0, inner, "CLOSEDPLANAR_XOR")])]
    ds = make_rtstruct(series, rois, series_uid=pydicom.uid.generate_uid(),
                       sop_uid=pydicom.uid.generate_uid())
    by_type = read_segmentation(ds, series, holes="geometric-type").masks
    even_odd = read_segmentation(ds, series).masks
    k = int(np.flatnonzero(by_type[0].any(axis=(1, 2)))[0])
    assert by_type[0, k, 9, 8] and not by_type[1, k, 9, 8]  # union fills, XOR cuts the hole
    assert not even_odd[0, k, 9, 8] and not even_odd[1, k, 9, 8]
    assert by_type[0, k].sum() == 18 * 13 and by_type[1, k].sum() == 18 * 13 - 6 * 4


# -- errors ------------------------------------------------------------------------------------


def test_contour_off_the_planes_names_the_roi() -> None:
    series = _oblique_series(n=3)
    ds = make_rtstruct(series, [("Liver", [Contour(1, ((2, 2), (2, 9), (9, 9)))])],
                       series_uid=pydicom.uid.generate_uid(), sop_uid=pydicom.uid.generate_uid())
    points = np.asarray(ds.ROIContourSequence[0].ContourSequence[0].ContourData, float)
    normal = np.cross(series[0].ImageOrientationPatient[:3], series[0].ImageOrientationPatient[3:])
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = list(
        (points.reshape(-1, 3) + 0.7 * normal).ravel())
    with pytest.raises(SegmentationError, match=r"ROI 1 \('Liver'\).*0\.7 mm off"):
        read_segmentation(ds, series)
    assert read_segmentation(ds, series, atol_mm=0.8).masks.any()


def test_seg_frame_off_the_planes_names_the_segment() -> None:
    series = _oblique_series(n=3)
    seg_ds = make_seg(series, _truth((3, 24, 20))[:1], ["Tumour"],
                      series_uid=pydicom.uid.generate_uid(), sop_uid=pydicom.uid.generate_uid())
    seg_ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(seg_ds)))
    position = seg_ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    position.ImagePositionPatient = [float(v) + 0.5 for v in position.ImagePositionPatient]
    with pytest.raises(SegmentationError, match=r"segment 1 \('Tumour'\).*SEG frame 1"):
        read_segmentation(seg_ds, series)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_annotation_of_another_series_is_an_error(archive: SampleArchive) -> None:
    series = _oblique_series(n=3)
    uid = _archive_uid(archive, "SEG")
    with pytest.raises(SegmentationError, match=r"segment 1 \('Ball'\).*refers to series"):
        read_segmentation(_files(archive, uid), series)
    rt = _archive_uid(archive, "RTSTRUCT")
    with pytest.raises(SegmentationError, match=r"ROI 1 \('Square'\).*refers to series"):
        read_segmentation(_files(archive, rt), series)


def test_bad_input_is_named(ct_files: list[Path]) -> None:
    with pytest.raises(SegmentationError, match="all SEG or all RTSTRUCT.*'CT'"):
        read_segmentation(ct_files[:1], ct_files)
    with pytest.raises(ValueError, match="holes must be one of"):
        read_segmentation(ct_files[:1], ct_files, holes="odd")


# -- xarray, NIfTI -----------------------------------------------------------------------------


def test_to_xarray_shares_coordinates(archive: SampleArchive, ct_files: list[Path]) -> None:
    pytest.importorskip("xarray")
    seg = read_segmentation(_files(archive, _archive_uid(archive, "SEG")), ct_files)
    ds = seg.to_xarray()
    assert ds["masks"].dims == ("segment", "z", "y", "x")
    assert ds["image"].dims == ("z", "y", "x")
    np.testing.assert_array_equal(ds["masks"].values, seg.masks)
    np.testing.assert_array_equal(ds["z"].values, seg.image.positions)
    assert ds["label"].values.tolist() == ["Ball", "Box"]
    assert ds.attrs["ReferencedSeriesInstanceUID"] == seg.image.metadata["SeriesInstanceUID"]


def test_nifti_keeps_every_voxel_in_its_ras_place(archive: SampleArchive, ct_files: list[Path],
                                                  tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    series = _oblique_series()
    volume = volume_from_datasets(series)
    out = volume.to_nifti(tmp_path / "image.nii.gz")
    image = nib.load(out)
    data = np.asarray(image.dataobj)
    assert data.shape == volume.shape[::-1]
    for k, j, i in [(0, 0, 0), (5, 23, 19), (2, 7, 11)]:
        assert data[i, j, k] == volume.array[k, j, i]
        lps = pixel_to_patient(volume.sources[k], np.array([j]), np.array([i]))[0]
        np.testing.assert_allclose(image.affine @ [i, j, k, 1], [-lps[0], -lps[1], lps[2], 1],
                                   atol=1e-4)
    assert not list(tmp_path.glob(".*"))  # no temporary left
    seg = read_segmentation(_files(archive, _archive_uid(archive, "SEG")), ct_files)
    masks = nib.load(seg.to_nifti(tmp_path / "masks.nii"))
    np.testing.assert_array_equal(np.asarray(masks.dataobj), seg.masks.transpose(3, 2, 1, 0))
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        seg.to_nifti(tmp_path / "masks.nrrd")


# -- through the client ------------------------------------------------------------------------


def test_client_annotations_and_read_segmentation(server, tmp_cache: Path) -> None:
    archive = server.archive
    ct = _archive_uid(archive, "CT")
    with TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                    cache_dir=tmp_cache) as client:
        found = client.annotations(ct)
        assert sorted(found["Modality"]) == ["RTDOSE", "RTSTRUCT", "SEG"]
        how = dict(zip(found["Modality"], found["ReferencedBy"], strict=True))
        assert how == {"SEG": "series", "RTSTRUCT": "series", "RTDOSE": "frame of reference"}
        assert set(found["ReferencedSeriesInstanceUID"]) == {ct}
        on_mr = client.annotations(_archive_uid(archive, "MR"))  # same study and frame
        assert on_mr[["Modality", "ReferencedBy"]].values.tolist() == [
            ["RTDOSE", "frame of reference"]]
        assert client.annotations(_archive_uid(archive, "CT")).equals(found)
        seg_uid = _archive_uid(archive, "SEG")
        seg = client.read_segmentation(seg_uid)
        np.testing.assert_array_equal(seg.masks, archive.annotation_truth(seg_uid))
        with pytest.raises(SegmentationError, match="RTDOSE.*read_dose"):
            client.read_segmentation(_archive_uid(archive, "RTDOSE"))

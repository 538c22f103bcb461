"""Annotations of known content for the sample archive and the tests: SEG, RTSTRUCT, RTDOSE.

Each maker takes the image datasets it annotates and computes every position from their own
(0020,0032) *Image Position (Patient)*, (0020,0037) *Image Orientation (Patient)* and (0028,0030)
*Pixel Spacing* (PS3.3 C.7.6.2.1.1), never through :mod:`intake_tcia.volume`, so what the
library reads back can be checked against the masks they were made from.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage

__all__ = ["Contour", "SampleAnnotations", "make_rtdose", "make_rtstruct", "make_seg",
           "pixel_to_patient", "sample_annotations"]


@dataclass(frozen=True)
class Contour:
    """One planar contour: the source image it lies on and its vertices in pixel units.

    Attributes
    ----------
    source : int
        Index of the image dataset (in the list given to :func:`make_rtstruct`).
    vertices : tuple of (row, column)
        Continuous pixel coordinates ``(j, i)``; pixel centres are at integers.
    geometric_type : str
        (3006,0042) *Contour Geometric Type*.
    """

    source: int
    vertices: tuple[tuple[float, float], ...]
    geometric_type: str = "CLOSED_PLANAR"


def pixel_to_patient(ds: Dataset, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """LPS points (n, 3), mm, of continuous pixel coordinates ``(j, i)`` of image ``ds``."""
    cosines = np.asarray(ds.ImageOrientationPatient, float)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    origin = np.asarray(ds.ImagePositionPatient, float)
    return (origin + np.outer(np.asarray(rows, float) * dy, cosines[3:])
            + np.outer(np.asarray(columns, float) * dx, cosines[:3]))


def make_seg(
    sources: Sequence[Dataset],
    masks: np.ndarray,
    labels: Sequence[str],
    *,
    series_uid: str,
    sop_uid: str,
    fractional: bool = False,
    series_number: int = 300,
) -> Dataset:
    """A DICOM SEG made by highdicom: segment ``s`` is ``masks[s, n]`` on ``sources[n]``.

    Parameters
    ----------
    sources : sequence of pydicom.Dataset
        The image instances, in any order.
    masks : numpy.ndarray
        ``(segment, len(sources), rows, columns)``: bool, or fractions in [0, 1] when
        ``fractional``. Empty frames are left out of the SEG (it covers only some slices).
    labels : sequence of str
        *Segment Label* of each segment (numbered from 1).
    series_uid, sop_uid : str
        UIDs of the new instance.
    fractional : bool
        A ``FRACTIONAL`` (probability, maximum 255) SEG instead of ``BINARY``.
    series_number : int
        (0020,0011) *Series Number*.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n + 1, segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Neoplasm if n else codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in enumerate(labels)
    ]
    pixels = np.moveaxis(np.asarray(masks), 0, -1)
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=pixels.astype(np.float32) if fractional else pixels.astype(bool),
        segmentation_type="FRACTIONAL" if fractional else "BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_uid, instance_number=1,
        manufacturer="intake-tcia", manufacturer_model_name="sample archive",
        software_versions="1", device_serial_number="1",
    )
    seg.SeriesDescription = f"SEG {len(labels)} segments"
    return seg


def make_rtstruct(
    sources: Sequence[Dataset],
    rois: Sequence[tuple[str, Sequence[Contour]]],
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int = 301,
) -> Dataset:
    """An RT Structure Set whose ROIs are ``rois``: ``(ROIName, contours)``, numbered from 1.

    Contour points are the patient positions of each contour's pixel-unit vertices on its
    source image; the header (patient, study, frame of reference, referenced series and
    images) comes from ``sources[0]``.
    """
    first = sources[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop_uid
    for name in ("PatientID", "PatientName", "PatientSex", "PatientBirthDate",
                 "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "StudyDescription",
                 "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID"):
        if name in first:
            setattr(ds, name, first.get(name))
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, series_number, 1
    ds.SeriesDate = first.get("StudyDate", "")
    ds.SeriesDescription = f"RTSTRUCT {len(rois)} ROIs"
    ds.Manufacturer = "intake-tcia"
    ds.StructureSetLabel = "sample"
    ds.StructureSetDate, ds.StructureSetTime = first.get("StudyDate", ""), "000000"
    images = DicomSequence([_reference(s) for s in sources])
    series_item = Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    series_item.ContourImageSequence = images
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
    study_item.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = DicomSequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_item.RTReferencedStudySequence = DicomSequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_item])
    ds.StructureSetROISequence = DicomSequence()
    ds.ROIContourSequence = DicomSequence()
    ds.RTROIObservationsSequence = DicomSequence()
    for number, (name, contours) in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = [255, 0, 0]
        item.ContourSequence = DicomSequence([_contour(sources, c) for c in contours])
        ds.ROIContourSequence.append(item)
        observation = Dataset()
        observation.ObservationNumber = observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "ORGAN" if number == 1 else "GTV"
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    return ds


def _reference(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def _contour(sources: Sequence[Dataset], contour: Contour) -> Dataset:
    rows, columns = np.asarray(contour.vertices, float).T
    points = pixel_to_patient(sources[contour.source], rows, columns)
    item = Dataset()
    item.ContourImageSequence = DicomSequence([_reference(sources[contour.source])])
    item.ContourGeometricType = contour.geometric_type
    item.NumberOfContourPoints = len(points)
    item.ContourData = [f"{v:.6f}" for v in points.ravel()]
    return item


def make_rtdose(
    reference: Dataset,
    dose_gy: np.ndarray,
    *,
    position: Sequence[float],
    pixel_spacing: tuple[float, float],
    offsets: Sequence[float],
    series_uid: str,
    sop_uid: str,
    scaling: float = 1e-4,
    series_number: int = 302,
) -> Dataset:
    """An RT Dose instance (from pydicom's ``rtdose.dcm``) holding ``dose_gy`` in Gy.

    Parameters
    ----------
    reference : pydicom.Dataset
        An image of the study: patient, study and frame of reference are copied from it.
    dose_gy : numpy.ndarray
        ``(frames, rows, columns)`` dose in Gy, stored as ``round(dose / scaling)`` (uint32).
    position, pixel_spacing, offsets
        (0020,0032) *Image Position (Patient)*, (0028,0030) *Pixel Spacing* and (3004,000C)
        *Grid Frame Offset Vector* (either form of C.8.8.3.2); the orientation is axial.
    series_uid, sop_uid : str
        UIDs of the new instance.
    scaling : float
        (3004,000E) *Dose Grid Scaling*.
    """
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm", download=False))
    ds = copy.deepcopy(ds)
    for name in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime",
                 "StudyID", "StudyDescription", "FrameOfReferenceUID"):
        if name in reference:
            setattr(ds, name, reference.get(name))
    ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    del ds.ReferencedRTPlanSequence  # a plan the archive does not hold (and an invalid UID)
    ds.SeriesDate = reference.get("StudyDate", "")
    ds.SeriesDescription = "RTDOSE plan dose"
    stored = np.rint(np.asarray(dose_gy, float) / scaling).astype(np.uint32)
    ds.NumberOfFrames, ds.Rows, ds.Columns = stored.shape
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = list(pixel_spacing)
    ds.GridFrameOffsetVector = [f"{v:.4f}" for v in offsets]
    ds.DoseGridScaling = f"{scaling:g}"
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.PixelData = stored.tobytes()
    return ds


@dataclass(frozen=True)
class SampleAnnotations:
    """The known content of the sample archive's annotations of one image series.

    Attributes
    ----------
    shape : tuple of int
        ``(z, y, x)`` of the image volume, ``z`` ascending along the slice normal.
    """

    shape: tuple[int, int, int]
    seg_labels: tuple[str, ...] = ("Ball", "Box")
    roi_labels: tuple[str, ...] = ("Square", "Ring")
    dose_shape: tuple[int, int, int] = (5, 12, 14)
    dose_spacing: tuple[float, float] = (8.0, 8.0)
    dose_scaling: float = 1e-4

    @property
    def seg_masks(self) -> np.ndarray:
        """bool (2, z, y, x): an ellipsoid on the middle slices, a box on the first four."""
        k, j, i = np.indices(self.shape)
        nz, ny, nx = self.shape
        ball = (((k - nz / 2) / (nz / 3)) ** 2 + ((j - ny * 0.45) / (ny / 6)) ** 2
                + ((i - nx * 0.55) / (nx / 5)) ** 2) <= 1
        box = (k < 4) & (j >= ny // 12) & (j < ny // 4) & (i >= nx * 3 // 4) & (i < nx - 4)
        return np.stack([ball, box])

    def _square(self) -> tuple[int, int, int, int]:
        ny, nx = self.shape[1:]
        return ny // 6, ny // 3, nx // 4, nx // 2  # rows [a, b), columns [c, d)

    def _rings(self) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        ny, nx = self.shape[1:]
        return (ny // 2, ny - 20, nx // 2, nx - 20), (ny // 2 + 10, ny - 35, nx // 2 + 10,
                                                      nx - 35)

    @property
    def roi_masks(self) -> np.ndarray:
        """bool (2, z, y, x): a square on slices 3-5; a ring (square with a square hole) on 6."""
        out = np.zeros((2, *self.shape), dtype=bool)
        a, b, c, d = self._square()
        out[0, 3:6, a:b, c:d] = True
        (a, b, c, d), (e, f, g, h) = self._rings()
        out[1, 6, a:b, c:d] = True
        out[1, 6, e:f, g:h] = False
        return out

    def rois(self, order: Sequence[int]) -> list[tuple[str, list[Contour]]]:
        """The ROIs as contours; ``order[k]`` is the source image of slice ``k``.

        Vertices lie half a pixel outside the boundary pixels' centres, so the pixels enclosed
        are exactly those of :attr:`roi_masks`.
        """
        def box(source: int, a: int, b: int, c: int, d: int) -> Contour:
            rows, columns = (a - 0.5, b - 0.5), (c - 0.5, d - 0.5)
            corners = ((rows[0], columns[0]), (rows[0], columns[1]), (rows[1], columns[1]),
                       (rows[1], columns[0]))
            return Contour(int(source), corners)

        outer, inner = self._rings()
        return [
            (self.roi_labels[0], [box(order[k], *self._square()) for k in (3, 4, 5)]),
            (self.roi_labels[1], [box(order[6], *outer), box(order[6], *inner)]),
        ]

    @property
    def dose_gy(self) -> np.ndarray:
        """float (frames, rows, columns) dose in Gy, frames ascending in z (as stored)."""
        k, j, i = np.indices(self.dose_shape)
        dose = 2.0 + 0.25 * k + 0.01 * j + 0.001 * i
        return np.rint(dose / self.dose_scaling) * self.dose_scaling

    def dose_grid(self, lowest: Dataset) -> dict[str, object]:
        """Keywords of :func:`make_rtdose`: a grid starting 10 mm before the lowest image's
        corner, relative offsets 5 mm apart (the first one 0)."""
        origin = np.asarray(lowest.ImagePositionPatient, float) - [10.0, 10.0, 0.0]
        return {"position": origin.tolist(), "pixel_spacing": self.dose_spacing,
                "offsets": [5.0 * n for n in range(self.dose_shape[0])],
                "scaling": self.dose_scaling}


def sample_annotations(shape: tuple[int, int, int]) -> SampleAnnotations:
    """The annotations the sample archive gives an image volume of ``shape`` (z, y, x)."""
    return SampleAnnotations(tuple(int(n) for n in shape))  # type: ignore[arg-type]

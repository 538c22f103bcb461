"""DICOM SEG and RTSTRUCT annotations as boolean masks on their image series' voxel grid.

Public API
----------
:func:`read_segmentation`
    An annotation (SEG or RTSTRUCT) and the image series it refers to, as a
    :class:`Segmentation`: the image :class:`~intake_tcia.volume.Volume`, masks
    ``(segment, z, y, x)`` on that volume's grid, a table of segments, ``to_xarray()`` and
    ``to_nifti()``.
:class:`Segmentation`, :class:`SegmentationError`, :data:`PLANE_ATOL_MM`,
:data:`FRACTION_THRESHOLD`

How annotations are placed
--------------------------
* **SEG** (needs the ``seg`` extra, highdicom): every frame is decoded by highdicom and put on
  the image slice its (0020,0032) *Image Position (Patient)* falls on, whatever the frame order
  and however few slices the frames cover. Its (0020,0037) *Image Orientation (Patient)*,
  *Pixel Spacing*, rows and columns must be the image's. ``BINARY`` frames are masks as they
  are, ``FRACTIONAL`` ones where value / (0062,000E) *Maximum Fractional Value* is at least
  ``threshold``, ``LABELMAP`` ones where the label is the segment number.
* **RTSTRUCT**: each ``CLOSED_PLANAR`` (or ``CLOSEDPLANAR_XOR``) contour of an ROI is mapped
  into voxel indices through the inverse of the image's affine and must lie on one image slice.
  It is filled on that slice by the even-odd rule at pixel centres (a pixel is inside when its
  centre is). Contours of one ROI on one slice are combined by exclusive or
  (``holes="even-odd"``: a contour inside another cuts a hole), or, with
  ``holes="geometric-type"``, ``CLOSED_PLANAR`` contours by union and ``CLOSEDPLANAR_XOR``
  ones by exclusive or. A pixel whose centre lies *on* a contour (within
  :data:`ON_CONTOUR_TOL` pixels) belongs to the ROI, whether the contour is an outline or a
  hole's: this is how tools that make RTSTRUCTs from masks (rt-utils, OpenCV's contour
  tracing, many planning systems) draw contours, through the centres of the mask's edge
  pixels, so such a mask reads back as it was. ``POINT`` and open contours enclose no area and
  are left out.

A frame or contour farther than ``atol_mm`` (default :data:`PLANE_ATOL_MM`) from the image's
planes, or an annotation that refers to another series or frame of reference, raises
:class:`SegmentationError` naming the segment: a mask is never silently shifted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from .datasets import dicom_paths
from .errors import import_optional
from .volume import (
    ORIENTATION_ATOL,
    StackKey,
    Volume,
    VolumeGeometryError,
    _frame_info,
    to_xarray,
    volume_from_datasets,
    volume_from_files,
)

__all__ = [
    "FRACTION_THRESHOLD",
    "ON_CONTOUR_TOL",
    "PLANE_ATOL_MM",
    "SEGMENT_COLUMNS",
    "Segmentation",
    "SegmentationError",
    "read_segmentation",
]

PLANE_ATOL_MM = 0.1
"""float: Largest distance (mm) a SEG frame's origin or an RTSTRUCT contour point may lie off
the image's slice planes (and a SEG frame's origin off the image's in-plane grid)."""

FRACTION_THRESHOLD = 0.5
"""float: A ``FRACTIONAL`` SEG voxel is in the mask when its fraction is at least this."""

SEGMENT_COLUMNS = ("number", "label", "property_category", "property_type", "algorithm_type",
                   "interpreted_type", "voxels")
"""tuple[str, ...]: Columns of :attr:`Segmentation.segments`."""

_CLOSED = ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")
_HOLES = ("even-odd", "geometric-type")
ON_CONTOUR_TOL = 1e-3
"""float: How close (in pixels) a pixel centre must be to a contour to count as on it."""


class SegmentationError(VolumeGeometryError):
    """An annotation does not fit its image: other series, off the slice planes, bad input."""


@dataclass(frozen=True, eq=False)
class Segmentation:
    """An annotation's segments as boolean masks on the voxel grid of its image series.

    Attributes
    ----------
    image : Volume
        The image series the annotation refers to.
    masks : numpy.ndarray
        bool, shape ``(segment, z, y, x)``: ``masks[s]`` lies on ``image.array``'s grid
        (``z`` ascending along the slice normal, as the image).
    segments : pandas.DataFrame
        One row per segment, in the order of ``masks``; columns :data:`SEGMENT_COLUMNS`:
        ``number`` (SEG *Segment Number*, RTSTRUCT *ROI Number*), ``label`` (*Segment Label*,
        *ROI Name*), ``property_category`` and ``property_type`` (SEG code meanings),
        ``algorithm_type`` (SEG), ``interpreted_type`` (RTSTRUCT *RT ROI Interpreted Type*)
        and ``voxels`` (voxels in the mask).
    metadata : dict of str to str
        The annotation's Modality, SeriesInstanceUID, SOPInstanceUID (of its first instance)
        and ``ReferencedSeriesInstanceUID`` (the image's).
    """

    image: Volume
    masks: np.ndarray
    segments: pd.DataFrame
    metadata: dict[str, str]

    def __repr__(self) -> str:
        labels = ", ".join(map(str, self.segments["label"].tolist()))
        return (f"<Segmentation {self.metadata.get('Modality')}: {len(self.segments)} segments "
                f"({labels}) on {'x'.join(map(str, self.image.shape))} voxels>")

    def to_xarray(self) -> Any:
        """The image and masks as one ``xarray.Dataset`` with shared coordinates in mm.

        Returns
        -------
        xarray.Dataset
            ``image`` ``(z, y, x)`` (as :func:`intake_tcia.volume.to_xarray`) and ``masks``
            ``(segment, z, y, x)`` bool; coordinate ``segment`` holds the segment numbers,
            ``label`` (on ``segment``) their labels; attrs: :attr:`metadata`.
        """
        xr = import_optional("xarray", "xarray", "Segmentation.to_xarray")
        image = to_xarray(self.image)
        masks = xr.DataArray(
            self.masks, dims=("segment", "z", "y", "x"),
            coords={"segment": self.segments["number"].to_numpy(),
                    "label": ("segment", self.segments["label"].astype(str).to_numpy()),
                    **image.coords},
        )
        return xr.Dataset({"image": image, "masks": masks}, attrs=dict(self.metadata))

    def plot(self, index: Any = None, **options: Any) -> Any:
        """Show the image with each segment's outline, upright, through the masks' centre
        (``segments=``, ``orthogonal=True``, ``slider=True``: see
        :func:`intake_tcia.plot.plot`)."""
        from .plot import plot

        return plot(self, index, **options)

    def to_nifti(self, path: str | os.PathLike) -> Path:
        """Write the masks as a 4D NIfTI-1 file, ``(x, y, z, segment)`` uint8, RAS affine.

        See :func:`intake_tcia.nifti.write_nifti` for the axes and the LPS to RAS turn; the
        image itself goes out with ``seg.image.to_nifti(other_path)``, same affine.

        Parameters
        ----------
        path : str or os.PathLike
            Ends in ``.nii`` or ``.nii.gz``; written atomically.

        Returns
        -------
        pathlib.Path
        """
        from .nifti import write_nifti

        return write_nifti(self.masks.astype(np.uint8), self.image.affine, path)


def read_segmentation(
    annotation_files: Any,
    image_files: Any,
    *,
    stack: StackKey | int | None = None,
    atol_mm: float = PLANE_ATOL_MM,
    threshold: float = FRACTION_THRESHOLD,
    holes: str = "even-odd",
) -> Segmentation:
    """Read a DICOM SEG or RTSTRUCT as masks on the grid of the image series it refers to.

    Parameters
    ----------
    annotation_files : path-like, pydicom.Dataset, or an iterable of them
        The annotation's instance(s): SEG or RTSTRUCT, one series (the segments of several
        instances are stacked in order); a folder stands for the DICOM files in it.
    image_files : Volume, or path-like / pydicom.Dataset or an iterable of them
        The image series (the files, a folder holding them, or datasets, in any order; or
        the Volume already built).
    stack : tuple or int, optional
        The image stack, when the image series holds several (see
        :func:`intake_tcia.volume.split_stacks`).
    atol_mm : float, default :data:`PLANE_ATOL_MM`
        How far (mm) frames and contours may lie off the image's slice planes.
    threshold : float, default :data:`FRACTION_THRESHOLD`
        For ``FRACTIONAL`` SEG: the fraction from which a voxel is in the mask.
    holes : {"even-odd", "geometric-type"}
        How RTSTRUCT contours of one ROI on one slice combine (see the module docstring).

    Returns
    -------
    Segmentation

    Raises
    ------
    SegmentationError
        Not a SEG or RTSTRUCT; the annotation refers to another series or frame of
        reference; a frame or contour off the image's grid (the message names the segment).
    intake_tcia.errors.MissingDependencyError
        A SEG without the ``seg`` extra (highdicom) installed.
    """
    if holes not in _HOLES:
        raise ValueError(f"holes must be one of {_HOLES}, not {holes!r}")
    if not (atol_mm >= 0 and 0 < threshold <= 1):
        raise ValueError(f"need atol_mm >= 0 and 0 < threshold <= 1, not {atol_mm}, {threshold}")
    annotations = [_dataset(a) for a in dicom_paths(annotation_files)]
    if not annotations:
        raise SegmentationError("no annotation file given")
    modalities = sorted({str(ds.get("Modality")) for ds in annotations})
    if len(modalities) != 1 or modalities[0] not in ("SEG", "RTSTRUCT"):
        raise SegmentationError(f"annotations must be all SEG or all RTSTRUCT, not {modalities}")
    image = _image(image_files, stack)
    masks, rows = [], []
    for ds in annotations:
        if modalities[0] == "SEG":
            these, table = _seg_masks(ds, image, atol_mm=atol_mm, threshold=threshold)
        else:
            these, table = _rtstruct_masks(ds, image, atol_mm=atol_mm, holes=holes)
        masks.append(these)
        rows.extend(table)
    stacked = np.concatenate(masks) if masks else np.zeros((0, *image.shape), bool)
    segments = pd.DataFrame(rows, columns=list(SEGMENT_COLUMNS[:-1]))
    segments["voxels"] = stacked.reshape(len(stacked), -1).sum(axis=1).astype("int64")
    first = annotations[0]
    metadata = {
        "Modality": modalities[0],
        "SeriesInstanceUID": str(first.get("SeriesInstanceUID", "")),
        "SOPInstanceUID": str(first.get("SOPInstanceUID", "")),
        "ReferencedSeriesInstanceUID": image.metadata.get("SeriesInstanceUID", ""),
    }
    return Segmentation(image=image, masks=stacked, segments=segments, metadata=metadata)


# -- inputs ----------------------------------------------------------------------------------------


def _dataset(item: Any) -> Dataset:
    """A dataset, read from its path if need be."""
    return item if isinstance(item, Dataset) else pydicom.dcmread(item)


def _image(image_files: Any, stack: StackKey | int | None) -> Volume:
    """The image series as a Volume."""
    if isinstance(image_files, Volume):
        return image_files
    items = dicom_paths(image_files)
    if items and all(isinstance(i, Dataset) for i in items):
        return volume_from_datasets(items, stack=stack)
    return volume_from_files(items, stack=stack)


def _code_meaning(item: Dataset, sequence: str) -> str | None:
    """CodeMeaning of the first item of a code sequence."""
    codes = item.get(sequence)
    return str(codes[0].get("CodeMeaning")) if codes else None


def _check_references(ds: Dataset, image: Volume, referenced: Iterable[str], named: str) -> None:
    """Raise unless ``ds`` refers to the image's series (when it names any) and frame."""
    series = image.metadata.get("SeriesInstanceUID")
    referenced = sorted(set(referenced))
    if series and referenced and series not in referenced:
        raise SegmentationError(
            f"{ds.Modality} {ds.get('SOPInstanceUID')} ({named}) refers to series "
            f"{', '.join(referenced)}, not the image series {series}"
        )
    frame = image.metadata.get("FrameOfReferenceUID")
    own = ds.get("FrameOfReferenceUID")
    if frame and own and str(own) != frame:
        raise SegmentationError(
            f"{ds.Modality} {ds.get('SOPInstanceUID')} ({named}) is in frame of reference "
            f"{own}, not the image's {frame}"
        )


def _slice_of(points: np.ndarray, image: Volume, atol_mm: float, named: str, what: str) -> int:
    """The image slice all ``points`` (LPS mm, shape (n, 3)) lie on, else SegmentationError."""
    k = _to_voxel(points, image)[:, 0]
    nearest = int(np.rint(np.median(k)))
    off = float(np.max(np.abs(k - nearest))) * image.spacing[0]
    if not 0 <= nearest < image.shape[0] or off > atol_mm:
        where = ", ".join(f"{v:.2f}" for v in points[0])
        raise SegmentationError(
            f"{named}: {what} at ({where}) mm lies {_distance(k, image)} the image's "
            f"{image.shape[0]} slice planes (tolerance atol_mm={atol_mm})"
        )
    return nearest


def _distance(k: np.ndarray, image: Volume) -> str:
    """How far voxel slice coordinates ``k`` lie from the image's planes, in words."""
    if np.any(k < -0.5) or np.any(k > image.shape[0] - 0.5):
        return "outside"
    off = float(np.max(np.abs(k - np.rint(k)))) * image.spacing[0]
    return f"{off:.3g} mm off"


def _to_voxel(points: np.ndarray, image: Volume) -> np.ndarray:
    """Continuous ``(k, j, i)`` voxel coordinates of LPS points, shape (n, 3)."""
    inverse = np.linalg.inv(image.affine)
    return points @ inverse[:3, :3].T + inverse[:3, 3]


# -- SEG -------------------------------------------------------------------------------------------


def _seg_masks(ds: Dataset, image: Volume, *, atol_mm: float, threshold: float
               ) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """Masks and segment rows of one SEG instance."""
    hd = import_optional("highdicom", "seg", "Reading DICOM SEG")
    seg = hd.seg.Segmentation.from_dataset(ds, copy=True)
    rows = [(int(item.SegmentNumber), str(item.get("SegmentLabel", "")),
             _code_meaning(item, "SegmentedPropertyCategoryCodeSequence"),
             _code_meaning(item, "SegmentedPropertyTypeCodeSequence"),
             str(item.get("SegmentAlgorithmType", "")) or None, None)
            for item in ds.SegmentSequence]
    index = {row[0]: n for n, row in enumerate(rows)}
    names = {row[0]: f"segment {row[0]} ({row[1]!r})" for row in rows}
    referenced = [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])]
    _check_references(ds, image, referenced, ", ".join(names.values()))
    kind = str(ds.SegmentationType)
    maximum = float(ds.get("MaximumFractionalValue") or 1)
    masks = np.zeros((len(rows), *image.shape), dtype=bool)
    for f in range(int(ds.get("NumberOfFrames") or 1)):
        numbers = [row[0] for row in rows] if kind == "LABELMAP" else [_frame_segment(ds, f)]
        if any(n not in index for n in numbers):
            raise SegmentationError(f"SEG frame {f + 1} refers to segment {numbers}, which the "
                                    "SegmentSequence does not describe")
        k = _seg_frame_slice(ds, f, image, atol_mm, " and ".join(names[n] for n in numbers))
        stored = seg.get_stored_frame(f + 1)
        for n in numbers:
            if kind == "LABELMAP":
                plane = stored == n
            elif kind == "FRACTIONAL":
                plane = stored / maximum >= threshold
            else:
                plane = stored > 0
            masks[index[n], k] |= plane
    return masks, rows


def _frame_segment(ds: Dataset, f: int) -> int:
    """(0062,000B) *Referenced Segment Number* of frame ``f``."""
    groups = ds.PerFrameFunctionalGroupsSequence[f]
    identification = groups.get("SegmentIdentificationSequence") or (
        ds.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence)
    return int(identification[0].ReferencedSegmentNumber)


def _seg_frame_slice(ds: Dataset, f: int, image: Volume, atol_mm: float, named: str) -> int:
    """The image slice SEG frame ``f`` lies on, after checking it matches the image's grid."""
    info = _frame_info(ds, 0, f)
    if info.position is None or info.orientation is None or info.pixel_spacing is None:
        raise SegmentationError(f"{named}: SEG frame {f + 1} has no plane position, orientation"
                                " or pixel spacing, so it cannot be placed on the image")
    rows, columns = image.shape[1:]
    direction = image.direction
    image_cosines = np.concatenate([direction[:, 2], direction[:, 1]])
    if info.shape != (rows, columns):
        raise SegmentationError(f"{named}: SEG frames are {info.shape}, the image's slices "
                                f"{(rows, columns)} (rows, columns)")
    if np.any(np.abs(np.asarray(info.orientation) - image_cosines) > ORIENTATION_ATOL):
        raise SegmentationError(f"{named}: SEG frame {f + 1} orientation {info.orientation} is "
                                f"not the image's {tuple(image_cosines.round(6))}")
    drift = np.abs(np.subtract(info.pixel_spacing, image.spacing[1:])) * max(rows, columns)
    if np.any(drift > atol_mm):
        raise SegmentationError(f"{named}: SEG pixel spacing {info.pixel_spacing} is not the "
                                f"image's {image.spacing[1:]}")
    position = np.asarray(info.position, dtype=float)
    k = _slice_of(position[None, :], image, atol_mm, named, f"SEG frame {f + 1}")
    in_plane = float(np.linalg.norm(position - (image.affine @ [k, 0, 0, 1])[:3]))
    if in_plane > atol_mm:
        raise SegmentationError(f"{named}: SEG frame {f + 1} starts {in_plane:.3g} mm away from "
                                f"the image slice's first pixel (tolerance atol_mm={atol_mm})")
    return k


# -- RTSTRUCT --------------------------------------------------------------------------------------


def _rtstruct_masks(ds: Dataset, image: Volume, *, atol_mm: float, holes: str
                    ) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """Masks and ROI rows of one RTSTRUCT instance."""
    rois = list(ds.get("StructureSetROISequence", []))
    interpreted = {int(o.ReferencedROINumber): o.get("RTROIInterpretedType") or None
                   for o in ds.get("RTROIObservationsSequence", [])}
    rows = [(int(r.ROINumber), str(r.get("ROIName", "")), None, None, None,
             interpreted.get(int(r.ROINumber))) for r in rois]
    names = {row[0]: f"ROI {row[0]} ({row[1]!r})" for row in rows}
    _check_references(ds, image, _rt_referenced_series(ds), ", ".join(names.values()))
    frame = image.metadata.get("FrameOfReferenceUID")
    for roi in rois:
        own = roi.get("ReferencedFrameOfReferenceUID")
        if frame and own and str(own) != frame:
            raise SegmentationError(f"{names[int(roi.ROINumber)]} is in frame of reference "
                                    f"{own}, not the image's {frame}")
    index = {row[0]: n for n, row in enumerate(rows)}
    masks = np.zeros((len(rows), *image.shape), dtype=bool)
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        if number not in index:
            raise SegmentationError(f"contours refer to ROI {number}, which the "
                                    "StructureSetROISequence does not describe")
        _fill_roi(masks[index[number]], item.get("ContourSequence", []), image, atol_mm,
                  names[number], holes)
    return masks, rows


def _rt_referenced_series(ds: Dataset) -> list[str]:
    """Series UIDs an RTSTRUCT's (3006,0010) *Referenced Frame of Reference Sequence* names."""
    return [str(series.SeriesInstanceUID)
            for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
            for study in frame.get("RTReferencedStudySequence", [])
            for series in study.get("RTReferencedSeriesSequence", [])]


def _fill_roi(mask: np.ndarray, contours: Sequence[Dataset], image: Volume, atol_mm: float,
              named: str, holes: str) -> None:
    """Rasterise an ROI's closed planar contours into ``mask`` (z, y, x), in place."""
    union: dict[int, np.ndarray] = {}
    xor: dict[int, np.ndarray] = {}
    boundary: dict[int, np.ndarray] = {}
    for n, contour in enumerate(contours):
        kind = str(contour.get("ContourGeometricType", ""))
        if kind not in _CLOSED:
            continue
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        if len(points) < 3:
            raise SegmentationError(f"{named}: contour {n + 1} has {len(points)} points; a "
                                    "closed contour needs at least 3")
        k = _slice_of(points, image, atol_mm, named, f"contour {n + 1}")
        kji = _to_voxel(points, image)
        area = _polygon_mask(kji[:, 1], kji[:, 2], image.shape[1:])
        into = union if holes == "geometric-type" and kind == "CLOSED_PLANAR" else xor
        plane = into.setdefault(k, np.zeros(image.shape[1:], dtype=bool))
        if into is union:
            plane |= area
        else:
            plane ^= area
        edges = boundary.setdefault(k, np.zeros(image.shape[1:], dtype=bool))
        edges |= _centres_on_polygon(kji[:, 1], kji[:, 2], image.shape[1:])
    for k, plane in union.items():
        mask[k] |= plane
    for k, plane in xor.items():
        mask[k] ^= plane
    for k, plane in boundary.items():  # a centre on any contour of the ROI is in the ROI
        mask[k] |= plane


def _centres_on_polygon(rows: np.ndarray, columns: np.ndarray, shape: tuple[int, int]
                        ) -> np.ndarray:
    """Pixels whose centres lie on a closed polygon's edges, within :data:`ON_CONTOUR_TOL`
    pixels (private helper; coordinates as in :func:`_polygon_mask`)."""
    out = np.zeros(shape, dtype=bool)
    r0, c0 = np.asarray(rows, float), np.asarray(columns, float)
    r1, c1 = np.roll(r0, -1), np.roll(c0, -1)
    # every lattice point on an edge lies on a whole row (found unless the edge is horizontal)
    # and on a whole column (found unless it is vertical): walk both ways
    for a0, a1, b0, b1, swap in ((r0, r1, c0, c1, False), (c0, c1, r0, r1, True)):
        slanted = a0 != a1
        p0, p1, q0, q1 = a0[slanted], a1[slanted], b0[slanted], b1[slanted]
        low = np.ceil(np.minimum(p0, p1) - ON_CONTOUR_TOL)
        counts = (np.floor(np.maximum(p0, p1) + ON_CONTOUR_TOL) - low + 1).astype(int)
        edge = np.repeat(np.arange(len(p0)), np.maximum(counts, 0))
        steps = low[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(counts) - counts,
                                                                np.maximum(counts, 0)))
        q = q0[edge] + (steps - p0[edge]) * (q1[edge] - q0[edge]) / (p1[edge] - p0[edge])
        hit = np.abs(q - np.round(q)) <= ON_CONTOUR_TOL
        j, i = (np.round(q[hit]), steps[hit]) if swap else (steps[hit], np.round(q[hit]))
        inside = (j >= 0) & (j < shape[0]) & (i >= 0) & (i < shape[1])
        out[j[inside].astype(int), i[inside].astype(int)] = True
    return out


def _polygon_mask(rows: np.ndarray, columns: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres a polygon encloses, by the even-odd rule (private helper).

    Parameters
    ----------
    rows, columns : numpy.ndarray
        The vertices' continuous row (``j``) and column (``i``) coordinates; pixel ``(j, i)``
        has its centre at ``(j, i)``. The polygon closes from the last vertex to the first.
    shape : tuple of int
        ``(rows, columns)`` of the output.

    Returns
    -------
    numpy.ndarray
        bool, ``shape``: centres with an odd number of edges crossing the ray to their right
        (half-open in both directions, so shared edges of adjacent polygons count once).
    """
    out = np.zeros(shape, dtype=bool)
    r0, c0 = np.asarray(rows, float), np.asarray(columns, float)
    r1, c1 = np.roll(r0, -1), np.roll(c0, -1)
    first = max(int(np.ceil(r0.min())), 0)
    last = min(int(np.floor(r0.max())), shape[0] - 1)
    for j in range(first, last + 1):
        crossing = (r0 <= j) != (r1 <= j)
        if not crossing.any():
            continue
        a, b, ca, cb = r0[crossing], r1[crossing], c0[crossing], c1[crossing]
        x = np.sort(ca + (j - a) * (cb - ca) / (b - a))
        starts = np.clip(np.ceil(x[0::2]), 0, shape[1]).astype(int)
        ends = np.clip(np.ceil(x[1::2]), 0, shape[1]).astype(int)
        for start, end in zip(starts, ends, strict=True):
            out[j, start:end] = True
    return out

"""A DICOM series as a 3D array with its geometry: numpy, dask and xarray.

Public API
----------
:func:`sort_slices_by_position`
    Datasets sorted along the slice normal (InstanceNumber when geometry is missing).
:func:`split_stacks`
    A series' slices grouped into stacks (acquisitions, temporal positions, echoes, ...).
:func:`volume_from_datasets`, :func:`volume_from_files`
    One stack as a :class:`Volume`: the rescaled voxel array, eager (numpy) or lazy (dask,
    one chunk per slice, read from its file when computed), with an affine.
:func:`to_xarray`, :func:`to_dask`
    The same as an ``xarray.DataArray`` with dims ``("z", "y", "x")`` in mm, or a dask array.
:class:`Volume`, :class:`VolumeGeometryError`, :class:`VolumeGeometryWarning`

Conventions
-----------
* Array axes are ``(z, y, x)`` = ``(k, j, i)``: slice, row, column. Slices are ordered by
  ascending position along the slice normal ``n = r x c``, the cross product of the row and
  column direction cosines of (0020,0037) *Image Orientation (Patient)*.
* ``Volume.affine`` is a 4 x 4 matrix mapping the voxel index ``(k, j, i, 1)`` to patient
  coordinates in the DICOM LPS frame, in mm: ``affine @ [k, j, i, 1]`` is the
  (0020,0032) *Image Position (Patient)* of slice ``k`` moved ``j`` rows and ``i`` columns.
* Stored values are mapped through (0028,1053) *Rescale Slope* and (0028,1052) *Rescale
  Intercept* (per slice or per frame). The output keeps the stored integer dtype when there is
  nothing to rescale, takes the smallest integer dtype holding the rescaled range when slope and
  intercept are integers (CT in HU is usually ``int16``), and is ``float32`` otherwise. No VOI
  windowing, no MONOCHROME1 inversion, no Modality LUT Sequence.
* Enhanced (multi-frame) instances are read frame by frame from their functional groups
  (*Plane Position*, *Plane Orientation*, *Pixel Measures*, *Pixel Value Transformation*,
  *Frame Content*); RT Dose style instances from (3004,000C) *Grid Frame Offset Vector* (both
  forms of C.8.8.3.2: relative to the position, or absolute z when axial), their values scaled
  by (3004,000E) *Dose Grid Scaling* (see :mod:`intake_tcia.dose`).
* Compressed transfer syntaxes need a pydicom pixel-data plugin, ``pip install
  'intake-tcia[jpeg]'`` (pylibjpeg); without one,
  :class:`~intake_tcia.errors.MissingDependencyError` is raised.

Checks (all raise :class:`VolumeGeometryError`, a ``ValueError``, with what to do next):
slices of different shape, orientation or pixel spacing; non-uniform spacing (a missing slice),
beyond ``rtol``; gantry tilt (positions not moving along the normal) unless ``allow_tilt=True``;
several stacks in one series (or repeated positions) unless ``stack=`` picks one. Oblique
orientations are fine: the affine carries them. The only warning, :class:`VolumeGeometryWarning`,
is for slices without position, orientation or pixel spacing: they are ordered by
(0020,0013) *Instance Number* and the affine is the identity with unit or nominal spacing, which
the user must know before measuring anything on it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from intake_tcia.datasets import dicom_paths
from intake_tcia.errors import MissingDependencyError, TCIAError, import_optional

__all__ = [
    "RTOL",
    "ORIENTATION_ATOL",
    "POSITION_ATOL_MM",
    "TILT_TOL",
    "STACK_ATTRIBUTES",
    "Volume",
    "VolumeGeometryError",
    "VolumeGeometryWarning",
    "sort_slices_by_position",
    "split_stacks",
    "volume_from_datasets",
    "volume_from_files",
    "to_xarray",
    "to_dask",
]

RTOL = 0.01
"""float: Default relative tolerance on slice spacing and pixel spacing (as highdicom)."""

ORIENTATION_ATOL = 1e-4
"""float: Largest difference between direction cosines of slices of one stack (unitless)."""

POSITION_ATOL_MM = 0.01
"""float: Positions closer than this along the normal are the same position (mm); also the
in-plane drift allowed before a series counts as tilted."""

TILT_TOL = 1e-3
"""float: In-plane drift allowed per mm along the normal (tangent of the tilt angle) before a
series counts as acquired with gantry tilt."""

STACK_ATTRIBUTES = (
    "StackID",
    "TemporalPositionIndex",
    "TemporalPositionIdentifier",
    "EchoNumbers",
    "DiffusionBValue",
    "AcquisitionNumber",
)
"""tuple[str, ...]: Attributes that tell stacks of one series apart, tried in this order."""

_GROUP_OF = {
    "StackID": "FrameContentSequence",
    "TemporalPositionIndex": "FrameContentSequence",
    "DiffusionBValue": "MRDiffusionSequence",
}
_METADATA = ("Modality", "SeriesDescription", "PatientID", "StudyInstanceUID",
             "SeriesInstanceUID", "FrameOfReferenceUID")
_INTEGER_DTYPES = tuple(np.dtype(t) for t in ("u1", "i1", "u2", "i2", "u4", "i4", "i8"))

StackKey = tuple[tuple[str, Hashable], ...]
PathLike = str | os.PathLike


class VolumeGeometryError(TCIAError, ValueError):
    """The slices do not form one regular volume (the message says why and what to try)."""


class VolumeGeometryWarning(UserWarning):
    """Slices lack geometry: ordered by InstanceNumber, with an identity affine."""


@dataclass(frozen=True)
class _Frame:
    """One 2D image: a single-frame instance or one frame of a multi-frame instance."""

    source: int
    frame: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    instance: int | None
    slope: float
    intercept: float
    shape: tuple[int, int]
    stack_attrs: tuple[tuple[str, Hashable], ...]


@dataclass(frozen=True, eq=False)
class Volume:
    """One stack of a series as a voxel array with its geometry.

    Attributes
    ----------
    array : numpy.ndarray or dask.array.Array
        Rescaled voxel values, shape ``(z, y, x)`` = (slices, rows, columns).
    affine : numpy.ndarray
        4 x 4 matrix mapping ``(k, j, i, 1)`` voxel indices to LPS patient coordinates in mm.
    positions : numpy.ndarray
        Position of each slice along the slice normal, mm, ascending (the ``z`` coordinates).
    spacing : tuple of float
        ``(dz, dy, dx)`` in mm: distance between consecutive slice origins, between rows
        ((0028,0030) *Pixel Spacing* [0]) and between columns (*Pixel Spacing* [1]).
    sources : tuple
        The datasets or file paths the slices come from, in slice order.
    frames : tuple of int or None
        Frame index within each source (``None`` for single-frame instances).
    stack : tuple
        Key of the stack this volume holds, as in :func:`split_stacks` (``()`` if only one).
    metadata : dict of str to str
        Modality, SeriesDescription, PatientID, StudyInstanceUID, SeriesInstanceUID,
        FrameOfReferenceUID when present in the first slice.
    """

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        lazy = ", lazy" if not isinstance(self.array, np.ndarray) else ""
        uid = self.metadata.get("SeriesInstanceUID", "?")
        modality = self.metadata.get("Modality", "?")
        return (f"Volume({modality}, shape={self.shape}, spacing=({spacing}) mm, "
                f"dtype={self.dtype}{lazy}, series={uid})")

    array: Any
    affine: np.ndarray
    positions: np.ndarray
    spacing: tuple[float, float, float]
    sources: tuple[Any, ...]
    frames: tuple[int | None, ...]
    stack: StackKey
    metadata: dict[str, str]

    @property
    def shape(self) -> tuple[int, int, int]:
        """tuple of int: ``(z, y, x)`` number of slices, rows and columns."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        """numpy.dtype: Data type of the voxel values."""
        return np.dtype(self.array.dtype)

    @property
    def origin(self) -> np.ndarray:
        """numpy.ndarray: LPS position of voxel ``(0, 0, 0)`` in mm, shape (3,)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """numpy.ndarray: 3 x 3 unit vectors (columns) of the ``k``, ``j``, ``i`` axes in LPS."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    def to_nifti(self, path: PathLike) -> Any:
        """Write the voxels as a NIfTI-1 file (``.nii`` or ``.nii.gz``), LPS turned into RAS.

        See :func:`intake_tcia.nifti.write_nifti` (needs the ``seg`` extra, nibabel).

        Returns
        -------
        pathlib.Path
        """
        from .nifti import write_nifti

        return write_nifti(self.array, self.affine, path)

    def plot(self, index: Any = None, **options: Any) -> Any:
        """Show a slice (or, ``orthogonal=True``, three) upright, CT in a HU window; in Jupyter
        ``slider=True`` adds a slider over the slices. See :func:`intake_tcia.plot.plot`."""
        from .plot import plot

        return plot(self, index, **options)

    def coordinates(self) -> dict[str, np.ndarray]:
        """Voxel-centre coordinates in mm along each axis.

        Returns
        -------
        dict of str to numpy.ndarray
            ``z``: :attr:`positions`; ``y`` and ``x``: projections of the first slice's voxel
            centres on the column and row directions. For an axial, non-oblique series these
            are the patient's LPS ``z``, ``y`` and ``x``.
        """
        _, dy, dx = self.spacing
        col_dir, row_dir = self.direction[:, 1], self.direction[:, 2]
        _, ny, nx = self.shape
        return {
            "z": self.positions.copy(),
            "y": float(self.origin @ col_dir) + dy * np.arange(ny),
            "x": float(self.origin @ row_dir) + dx * np.arange(nx),
        }


def sort_slices_by_position(datasets: Iterable[Dataset]) -> list[Dataset]:
    """Sort datasets by ascending position along the slice normal.

    Parameters
    ----------
    datasets : iterable of pydicom.dataset.Dataset
        Instances of one series; header-only datasets (``stop_before_pixels``) are fine.

    Returns
    -------
    list of pydicom.dataset.Dataset
        The same objects, sorted by the projection of (0020,0032) *Image Position (Patient)* on
        the normal of (0020,0037) *Image Orientation (Patient)*, ties broken by (0020,0013)
        *Instance Number*. When any dataset lacks position or orientation, or orientations
        differ (a localizer), they are sorted by Instance Number instead, without a warning;
        datasets without it keep their order, last. A multi-frame instance sorts by its first
        frame.
    """
    datasets = list(datasets)
    heads = [_frame_info(ds, n, _frame_indices(ds)[0]) for n, ds in enumerate(datasets)]
    return [datasets[heads[k].source] for k in _sort_order(heads)]


def split_stacks(datasets: Iterable[Dataset]) -> dict[StackKey, list[Dataset]]:
    """Group a series' instances into stacks that can each form a volume.

    Slices of different (0020,0037) *Image Orientation (Patient)* (beyond
    :data:`ORIENTATION_ATOL`) are always separate stacks, keyed
    ``("ImageOrientationPatient", cosines rounded to 4 decimals)``. Within one orientation,
    stacks are split only when positions repeat: by the first attributes of
    :data:`STACK_ATTRIBUTES` that vary among repeated positions, then, if positions still
    repeat, by order of occurrence (key ``("Repeat", n)``, ``n`` from 0, by Instance Number).

    Parameters
    ----------
    datasets : iterable of pydicom.dataset.Dataset
        Instances of one series; header-only datasets are fine.

    Returns
    -------
    dict
        Stack key (a tuple of ``(attribute, value)`` pairs, ``()`` for a single stack) to the
        datasets of that stack, sorted as by :func:`sort_slices_by_position`. Keys are sorted
        by value. A multi-frame instance appears under every stack it has frames in.
    """
    datasets = list(datasets)
    stacks = _split(_frames_of_all(datasets))
    out: dict[StackKey, list[Dataset]] = {}
    for key, frames in stacks.items():
        seen = dict.fromkeys(f.source for f in frames)
        out[key] = [datasets[s] for s in seen]
    return out


def volume_from_datasets(
    datasets: Iterable[Dataset],
    *,
    stack: StackKey | int | None = None,
    rtol: float = RTOL,
    allow_tilt: bool = False,
) -> Volume:
    """Build an eager volume from datasets holding pixel data.

    Parameters
    ----------
    datasets : iterable of pydicom.dataset.Dataset
        Instances of one series, in any order, with their *Pixel Data*.
    stack : tuple or int, optional
        Which stack to build when the series holds several: a key of :func:`split_stacks` or
        its index in that dict. Not needed for a single stack.
    rtol : float, default :data:`RTOL`
        Relative tolerance on the uniformity of slice spacing (and pixel spacing). Pass
        ``float("inf")`` to stack slices with gaps anyway: the affine then uses the mean
        spacing while :attr:`Volume.positions` keeps the true positions.
    allow_tilt : bool, default False
        Accept slices whose positions do not move along the normal (gantry tilt); the affine
        is then sheared so that it still maps each slice to its true position.

    Returns
    -------
    Volume
        With a ``numpy.ndarray`` of shape ``(z, y, x)``.

    Raises
    ------
    VolumeGeometryError
        Several stacks and no ``stack``; mismatched shape, orientation or pixel spacing;
        non-uniform spacing; gantry tilt without ``allow_tilt``.
    intake_tcia.errors.MissingDependencyError
        Compressed pixel data and no decoder plugin installed.
    """
    datasets = list(datasets)
    key, frames, affine, positions, spacing = _select(
        _frames_of_all(datasets), stack=stack, rtol=rtol, allow_tilt=allow_tilt
    )
    reader = _reader(datasets, datasets, frames)
    return Volume(
        array=reader[:], affine=affine, positions=positions, spacing=spacing,
        sources=tuple(datasets[f.source] for f in frames), frames=tuple(f.frame for f in frames),
        stack=key, metadata=_metadata(datasets[frames[0].source]),
    )


def volume_from_files(
    paths: Iterable[PathLike],
    *,
    stack: StackKey | int | None = None,
    rtol: float = RTOL,
    allow_tilt: bool = False,
    lazy: bool = False,
) -> Volume:
    """Build a volume from DICOM files, reading headers first and pixels slice by slice.

    Headers are read with ``stop_before_pixels`` to sort and check the geometry; pixels are
    then decoded one slice at a time into the output, so the peak memory is about the volume.

    Parameters
    ----------
    paths : str, os.PathLike, or an iterable of them
        The files of one series, in any order, or the folder holding them (what
        ``TCIAClient.download()`` returns; see :func:`intake_tcia.datasets.dicom_paths`).
    stack, rtol, allow_tilt
        As in :func:`volume_from_datasets`.
    lazy : bool, default False
        Return a dask array with one chunk per slice, each read from its file when computed
        (needs the ``dask`` extra). The array pickles, so dask.distributed workers can run it.

    Returns
    -------
    Volume
        ``sources`` holds the paths as strings.

    Raises
    ------
    VolumeGeometryError, intake_tcia.errors.MissingDependencyError
        As in :func:`volume_from_datasets`.
    """
    paths = [os.fspath(p) for p in dicom_paths(paths)]
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    key, frames, affine, positions, spacing = _select(
        _frames_of_all(heads), stack=stack, rtol=rtol, allow_tilt=allow_tilt
    )
    reader = _reader(paths, heads, frames)
    if lazy:
        da = import_optional("dask.array", "dask", "Lazy volumes")
        from dask.base import tokenize

        array = da.from_array(
            reader, chunks=(1, *reader.shape[1:]), name=f"tcia-volume-{tokenize(reader)}",
            meta=np.empty((0, 0, 0), reader.dtype), fancy=False,
        )
    else:
        array = reader[:]
    return Volume(
        array=array, affine=affine, positions=positions, spacing=spacing,
        sources=tuple(paths[f.source] for f in frames), frames=tuple(f.frame for f in frames),
        stack=key, metadata=_metadata(heads[frames[0].source]),
    )


def to_dask(
    paths: Iterable[PathLike],
    *,
    stack: StackKey | int | None = None,
    rtol: float = RTOL,
    allow_tilt: bool = False,
) -> Any:
    """Lazy ``(z, y, x)`` dask array of a series' files, one chunk per slice.

    Same as ``volume_from_files(paths, lazy=True, ...).array``; see :func:`volume_from_files`.
    """
    return volume_from_files(paths, stack=stack, rtol=rtol, allow_tilt=allow_tilt, lazy=True).array


def to_xarray(volume: Volume, *, attrs: Mapping[str, Any] | None = None) -> Any:
    """The volume as an ``xarray.DataArray`` with dims ``("z", "y", "x")`` and coordinates in mm.

    Parameters
    ----------
    volume : Volume
        Eager or lazy; a lazy volume stays lazy (dask-backed).
    attrs : mapping, optional
        Extra attributes merged last, e.g. ``{"DOI": ..., "license": ...}`` from the catalog.

    Returns
    -------
    xarray.DataArray
        Named by modality and series description (``"CT ct 10 slices"``: a short plot label);
        coordinates in mm from :meth:`Volume.coordinates`, except that ``y`` counts *up* the
        image (minus the distance along the column direction), so ``y`` decreases from the
        first row to the last and ``da.isel(z=k).plot()`` shows a slice as a DICOM viewer does,
        first row on top (an axial slice upright: anterior up, the patient's right on the
        left; ``y`` is then the patient's anterior, -LPS y). attrs: ``units`` and
        ``long_name`` of the values (``"HU"`` / ``"CT number"`` for CT, ``"Gy"`` / ``"dose"``
        for RTDOSE; no ``units`` otherwise), the volume's metadata (Modality, UIDs,
        PatientID), ``affine`` (nested list, LPS mm, index order ``(z, y, x)``, as
        :attr:`Volume.affine`) and ``spacing`` (list, mm), then ``attrs``.
    """
    xr = import_optional("xarray", "xarray", "to_xarray")
    along = volume.coordinates()
    axes = {"z": (along["z"], "position along the slice normal"),
            "y": (-along["y"], "position up the image"),
            "x": (along["x"], "position across the image")}
    coords = {dim: (dim, values, {"units": "mm", "long_name": name})
              for dim, (values, name) in axes.items()}
    modality = volume.metadata.get("Modality")
    values = {"CT": {"units": "HU", "long_name": "CT number"},
              "RTDOSE": {"units": "Gy", "long_name": "dose"}}.get(
        str(modality), {"long_name": f"{modality or 'voxel'} value"})
    return xr.DataArray(
        volume.array, dims=("z", "y", "x"), coords=coords,
        name=_label(volume.metadata),
        attrs={**values, **volume.metadata, "affine": volume.affine.tolist(),
               "spacing": list(volume.spacing), **(attrs or {})},
    )


def _label(metadata: Mapping[str, str]) -> str:
    """A short name for plots: modality and series description, else ``"volume"``."""
    words = [metadata.get("Modality"), metadata.get("SeriesDescription")]
    return " ".join(w for w in words if w) or "volume"


# -- headers -> frames --------------------------------------------------------------------------


def _n_frames(ds: Dataset) -> int:
    """(0028,0008) *Number of Frames*, 1 when absent."""
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") else 1


def _frame_indices(ds: Dataset) -> Sequence[int | None]:
    """Frame indices of an instance: ``[None]`` for a single-frame (non-enhanced) instance."""
    count = _n_frames(ds)
    return range(count) if count > 1 or "PerFrameFunctionalGroupsSequence" in ds else [None]


def _plain(value: Any) -> Any:
    """A DICOM value as plain hashable Python (tuple for multi-values, None for empty)."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _lookup(ds: Dataset, groups: Sequence[Dataset], sequence: str | None, name: str) -> Any:
    """``name`` from the first functional group's ``sequence`` holding it, else the top level."""
    if sequence is not None:
        for group in groups:
            items = group.get(sequence)
            if items and items[0].get(name) not in (None, ""):
                return items[0].get(name)
    value = ds.get(name)
    return None if value == "" else value


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    """``count`` floats from a multi-valued element, or None when absent or malformed."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == count else None


def _grid_frame_position(position: Sequence[float], orientation: Sequence[float],
                         offsets: Sequence[Any], frame: int) -> tuple[float, float, float]:
    """Position of an RT Dose frame from (3004,000C) *Grid Frame Offset Vector* (C.8.8.3.2).

    Offsets are along the normal from (0020,0032) *Image Position (Patient)*, except when the
    orientation is axial ([1,0,0,0,1,0]) and the first offset equals the position's z: then
    they are absolute z values.
    """
    value = float(offsets[frame])
    axial = np.allclose(orientation, (1, 0, 0, 0, 1, 0), atol=ORIENTATION_ATOL)
    if axial and float(offsets[0]) != 0.0 and abs(float(offsets[0]) - position[2]) <= (
            POSITION_ATOL_MM):
        return (float(position[0]), float(position[1]), value)
    normal = np.cross(orientation[:3], orientation[3:])
    return tuple((np.asarray(position) + value * normal).tolist())  # type: ignore[return-value]


def _frame_info(ds: Dataset, source: int, frame: int | None) -> _Frame:
    """Geometry, rescale and stack attributes of one frame (``frame=None``: single-frame)."""
    groups: list[Dataset] = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if frame is not None and per_frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    if ds.get("SharedFunctionalGroupsSequence"):
        groups.append(ds.SharedFunctionalGroupsSequence[0])

    orientation = _floats(
        _lookup(ds, groups, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
    )
    position = _floats(_lookup(ds, groups, "PlanePositionSequence", "ImagePositionPatient"), 3)
    offsets = ds.get("GridFrameOffsetVector")
    if frame is not None and offsets is not None and position and orientation and not groups:
        position = _grid_frame_position(position, orientation, offsets, frame)
    elif frame is not None and not groups and _n_frames(ds) > 1:
        position = None  # one position for many frames: not a geometry
    pixel_spacing = _floats(_lookup(ds, groups, "PixelMeasuresSequence", "PixelSpacing"), 2)
    thickness = _lookup(ds, groups, "PixelMeasuresSequence", "SpacingBetweenSlices")
    if thickness is None:
        thickness = _lookup(ds, groups, "PixelMeasuresSequence", "SliceThickness")
    slope = _lookup(ds, groups, "PixelValueTransformationSequence", "RescaleSlope")
    if slope is None:
        slope = ds.get("DoseGridScaling")  # RT Dose: stored value x scaling = dose
    intercept = _lookup(ds, groups, "PixelValueTransformationSequence", "RescaleIntercept")
    instance = ds.get("InstanceNumber")
    return _Frame(
        source=source,
        frame=frame,
        position=position,  # type: ignore[arg-type]
        orientation=orientation,
        pixel_spacing=pixel_spacing,  # type: ignore[arg-type]
        thickness=float(thickness) if thickness is not None else None,
        instance=int(instance) if instance not in (None, "") else None,
        slope=float(slope) if slope is not None else 1.0,
        intercept=float(intercept) if intercept is not None else 0.0,
        shape=(int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)),
        stack_attrs=tuple(
            (name, _plain(_lookup(ds, groups, _GROUP_OF.get(name), name)))
            for name in STACK_ATTRIBUTES
        ),
    )


def _frames_of_all(datasets: Sequence[Dataset]) -> list[_Frame]:
    """Every frame of every dataset."""
    frames = []
    for n, ds in enumerate(datasets):
        frames.extend(_frame_info(ds, n, i) for i in _frame_indices(ds))
    return frames


# -- sorting and stacks --------------------------------------------------------------------------


def _normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit slice normal (row cosine x column cosine)."""
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def _has_geometry(frames: Sequence[_Frame]) -> bool:
    """Whether every frame has position and orientation, all orientations equal."""
    if not frames or any(f.position is None or f.orientation is None for f in frames):
        return False
    cosines = np.array([f.orientation for f in frames])
    return bool(np.all(np.abs(cosines - cosines[0]) <= ORIENTATION_ATOL))


def _along_normal(frames: Sequence[_Frame]) -> np.ndarray:
    """Position of each frame along the first frame's normal, mm."""
    positions = np.array([f.position for f in frames], dtype=float)
    return positions @ _normal(frames[0].orientation)  # type: ignore[arg-type]


def _sort_order(frames: Sequence[_Frame]) -> list[int]:
    """Indices sorting frames along the normal, else by Instance Number, then input order."""
    instance = np.array([np.inf if f.instance is None else f.instance for f in frames])
    ties = (np.array([f.frame or 0 for f in frames]), np.array([f.source for f in frames]))
    if frames and _has_geometry(frames):
        return np.lexsort((*ties, instance, _along_normal(frames))).tolist()
    return np.lexsort((*ties, instance)).tolist()


def _position_ids(frames: Sequence[_Frame]) -> np.ndarray | None:
    """An integer per frame, equal for positions within :data:`POSITION_ATOL_MM`."""
    if not _has_geometry(frames):
        return None
    along = _along_normal(frames)
    order = np.argsort(along, kind="stable")
    ids = np.empty(len(frames), dtype=int)
    ids[order] = np.concatenate(([0], np.cumsum(np.diff(along[order]) > POSITION_ATOL_MM)))
    return ids


def _sortable(key: StackKey) -> tuple[Any, ...]:
    """Sort key for stack keys holding numbers, strings and None."""
    return tuple(
        (1, 0.0, "") if v is None
        else (0, float(v), "") if isinstance(v, (int, float)) else (0, 0.0, str(v))
        for _, v in key
    )


def _orientation_groups(frames: Sequence[_Frame]) -> dict[StackKey, list[int]]:
    """Frame indices by (0020,0037) *Image Orientation (Patient)*, when every frame has one
    and they differ beyond :data:`ORIENTATION_ATOL`; else one group with key ``()``."""
    if any(f.orientation is None for f in frames):
        return {(): list(range(len(frames)))}
    cosines = np.array([f.orientation for f in frames])
    if np.all(np.abs(cosines - cosines[0]) <= ORIENTATION_ATOL):
        return {(): list(range(len(frames)))}
    groups: dict[StackKey, list[int]] = {}
    firsts: list[np.ndarray] = []
    for n, f in enumerate(frames):
        cosines = np.asarray(f.orientation)
        match = next((m for m, c in enumerate(firsts)
                      if np.all(np.abs(cosines - c) <= ORIENTATION_ATOL)), None)
        if match is None:
            match = len(firsts)
            firsts.append(cosines)
        key = (("ImageOrientationPatient", tuple(round(float(c), 4) for c in firsts[match])),)
        groups.setdefault(key, []).append(n)
    return groups


def _split(frames: Sequence[_Frame]) -> dict[StackKey, list[_Frame]]:
    """Frames grouped into stacks (see :func:`split_stacks`), each sorted."""
    out: dict[StackKey, list[_Frame]] = {}
    for key, members in _orientation_groups(frames).items():
        for subkey, stack in _split_one([frames[m] for m in members]).items():
            out[(*key, *subkey)] = stack
    return {key: out[key] for key in sorted(out, key=_sortable)}


def _split_one(frames: Sequence[_Frame]) -> dict[StackKey, list[_Frame]]:
    """Frames of one orientation grouped into stacks, each sorted."""
    if not frames:
        return {}
    ids = _position_ids(frames)
    groups: dict[StackKey, list[int]] = {(): list(range(len(frames)))}

    def repeats() -> bool:
        return ids is not None and any(len(set(ids[g])) < len(g) for g in groups.values())

    for n in range(len(STACK_ATTRIBUTES)):
        if not repeats():
            break
        if len({f.stack_attrs[n][1] for f in frames}) > 1:
            regrouped: dict[StackKey, list[int]] = {}
            for key, members in groups.items():
                for m in members:
                    regrouped.setdefault((*key, frames[m].stack_attrs[n]), []).append(m)
            groups = regrouped
    if repeats():
        regrouped = {}
        for key, members in groups.items():
            seen: dict[int, int] = {}
            for m in (members[k] for k in _sort_order([frames[m] for m in members])):
                occurrence = seen[ids[m]] = seen.get(ids[m], -1) + 1  # type: ignore[index]
                regrouped.setdefault((*key, ("Repeat", occurrence)), []).append(m)
        groups = regrouped
    out = {}
    for key in sorted(groups, key=_sortable):
        members = [frames[m] for m in groups[key]]
        out[key] = [members[k] for k in _sort_order(members)]
    return out


# -- geometry --------------------------------------------------------------------------------------


def _select(
    frames: Sequence[_Frame], *, stack: StackKey | int | None, rtol: float, allow_tilt: bool
) -> tuple[StackKey, list[_Frame], np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Pick the stack, then check and compute its geometry."""
    if not frames:
        raise VolumeGeometryError("no slices: a volume needs at least one image")
    stacks = _split(frames)
    keys = list(stacks)
    if stack is None and len(keys) > 1:
        names = [name for key in keys for name, _ in key]
        orientations = {v for key in keys for name, v in key if name == "ImageOrientationPatient"}
        why = (f" (slices in {len(orientations)} orientations)" if orientations
               else " (positions repeat with no attribute telling them apart)"
               if "Repeat" in names else "")
        listing = "; ".join(f"[{n}] {k!r}: {len(stacks[k])} slices" for n, k in enumerate(keys))
        raise VolumeGeometryError(
            f"the series holds {len(keys)} stacks{why}: {listing}. Pick one with stack=<key> or "
            "stack=<index> (see intake_tcia.volume.split_stacks)"
        )
    if stack is None:
        key: StackKey | None = keys[0]
    elif isinstance(stack, int) and not isinstance(stack, bool):
        key = keys[stack] if -len(keys) <= stack < len(keys) else None
    else:
        wanted = tuple(tuple(pair) for pair in stack)
        key = wanted if wanted in stacks else None
    if key is None:
        raise VolumeGeometryError(f"no stack {stack!r}; the stacks are {keys!r}")
    chosen = stacks[key]
    return (key, chosen, *_geometry(chosen, rtol=rtol, allow_tilt=allow_tilt))


def _check_same(frames: Sequence[_Frame], rtol: float) -> None:
    """Raise unless all frames share shape, orientation and pixel spacing."""
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VolumeGeometryError(f"slices differ in (rows, columns): {sorted(shapes)}")
    cosines = [f.orientation for f in frames if f.orientation is not None]
    if cosines and np.any(np.abs(np.array(cosines) - cosines[0]) > ORIENTATION_ATOL):
        distinct = sorted({tuple(round(c, 4) for c in o) for o in cosines})
        raise VolumeGeometryError(
            f"slices differ in ImageOrientationPatient ({len(distinct)} orientations, e.g. "
            f"{distinct[:3]}): not one volume; select the slices of one orientation first"
        )
    spacings = np.array([f.pixel_spacing for f in frames if f.pixel_spacing is not None])
    if len(spacings) and np.any(np.abs(spacings - spacings[0]) > rtol * spacings[0]):
        raise VolumeGeometryError(
            f"slices differ in PixelSpacing: {sorted({tuple(s) for s in spacings.tolist()})}"
        )


def _geometry(
    frames: Sequence[_Frame], *, rtol: float, allow_tilt: bool
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Affine, positions along the normal and spacing of sorted frames of one stack."""
    _check_same(frames, rtol)
    first = frames[0]
    nominal = first.thickness or 1.0
    if not _has_geometry(frames) or first.pixel_spacing is None:
        warnings.warn(
            "slices lack ImagePositionPatient, ImageOrientationPatient or PixelSpacing: "
            "ordered by InstanceNumber, identity orientation, spacing "
            f"({nominal}, {first.pixel_spacing or (1.0, 1.0)}) mm assumed",
            VolumeGeometryWarning, stacklevel=4,
        )
        dy, dx = first.pixel_spacing or (1.0, 1.0)
        affine = np.diag([nominal, dy, dx, 1.0])[[2, 1, 0, 3]]
        return affine, nominal * np.arange(len(frames)), (nominal, dy, dx)

    row_dir, col_dir = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = _normal(first.orientation)
    points = np.array([f.position for f in frames], dtype=float)
    along = points @ normal
    step = normal * nominal
    if len(frames) > 1:
        gaps = np.diff(along)
        typical = float(np.median(gaps))
        odd = np.flatnonzero(np.abs(gaps - typical) > rtol * typical)
        if odd.size:
            k = int(odd[np.argmax(np.abs(gaps[odd] - typical))])
            raise VolumeGeometryError(
                f"slice spacing is not uniform: typically {typical:.4g} mm, but "
                f"{gaps[k]:.4g} mm between positions {along[k]:.4g} and {along[k + 1]:.4g} mm "
                f"along the normal (missing slices?; rtol={rtol}). Pass rtol=float('inf') to "
                "stack anyway (the affine then uses the mean spacing)"
            )
        drift = (points - points[0]) - np.outer(along - along[0], normal)
        tilted = np.linalg.norm(drift, axis=1) > POSITION_ATOL_MM + TILT_TOL * (along - along[0])
        step = (points[-1] - points[0]) / (len(frames) - 1)
        if tilted.any():
            angle = np.degrees(np.arctan2(np.linalg.norm(drift[-1]), along[-1] - along[0]))
            if not allow_tilt:
                raise VolumeGeometryError(
                    f"slice positions move {angle:.3g} degrees off the slice normal (gantry "
                    "tilt): pass allow_tilt=True for a sheared affine, or resample the series"
                )
            off_line = np.linalg.norm(
                points - points[0] - np.outer(np.arange(len(frames)), step), axis=1)
            if off_line.max() > POSITION_ATOL_MM + rtol * np.linalg.norm(step):
                raise VolumeGeometryError("tilted slice positions do not lie on a line")
        else:
            step = normal * (along[-1] - along[0]) / (len(frames) - 1)
    dy, dx = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = (
        step, col_dir * dy, row_dir * dx, points[0])
    return affine, along, (float(np.linalg.norm(step)), float(dy), float(dx))


def _metadata(ds: Dataset) -> dict[str, str]:
    """The identifying attributes of a slice, as strings."""
    return {name: str(ds.get(name)) for name in _METADATA if ds.get(name) not in (None, "")}


# -- pixels ----------------------------------------------------------------------------------------


def _transfer_syntax(ds: Dataset) -> str | None:
    """(0002,0010) *Transfer Syntax UID* of a dataset, if known."""
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(value) if value else None


@lru_cache(maxsize=64)
def _require_decoder(tsyntax: str | None) -> None:
    """Raise :class:`MissingDependencyError` if no plugin can decode ``tsyntax``."""
    if tsyntax is None or not pydicom.uid.UID(tsyntax).is_compressed:
        return
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise MissingDependencyError(
            f"pydicom cannot decode transfer syntax {tsyntax} ({exc})"
        ) from exc
    if not decoder.is_available:
        raise MissingDependencyError(
            f"decoding {pydicom.uid.UID(tsyntax).name} pixel data needs a plugin: "
            f"pip install 'intake-tcia[jpeg]' ({'; '.join(decoder.missing_dependencies)})"
        )


def _stored_dtype(ds: Dataset) -> tuple[np.dtype, int]:
    """Dtype pydicom decodes a slice to, and (0028,0101) *Bits Stored*."""
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        raise VolumeGeometryError("only single-sample (grayscale) images form a volume")
    allocated = int(ds.BitsAllocated)
    kind = "i" if int(ds.get("PixelRepresentation") or 0) else "u"
    return np.dtype(f"{kind}{max(allocated, 8) // 8}"), int(ds.get("BitsStored") or allocated)


def _output_dtype(stored: np.dtype, bits: int, frames: Sequence[_Frame]) -> np.dtype:
    """Stored dtype if nothing to rescale, smallest integer dtype if integral, else float32."""
    pairs = {(f.slope, f.intercept) for f in frames}
    if pairs == {(1.0, 0.0)}:
        return stored
    if not all(s.is_integer() and b.is_integer() for s, b in pairs):
        return np.dtype("float32")
    signed = stored.kind == "i"
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = [v * s + b for s, b in pairs for v in (low, high)]
    for dtype in _INTEGER_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= min(ends) and max(ends) <= info.max:
            return dtype
    return np.dtype("float64")


class _SliceReader:
    """Array-like reading and rescaling slices on demand; picklable for dask workers."""

    ndim = 3

    def __init__(self, sources: Sequence[Any], frames: Sequence[_Frame],
                 tsyntaxes: Sequence[str | None], shape: tuple[int, int, int],
                 dtype: np.dtype) -> None:
        self.sources = tuple(sources[f.source] for f in frames)
        self.frames = tuple(f.frame for f in frames)
        self.tsyntaxes = tuple(tsyntaxes[f.source] for f in frames)
        self.rescale = tuple((f.slope, f.intercept) for f in frames)
        self.shape = shape
        self.dtype = dtype

    def __dask_tokenize__(self) -> Hashable:
        return ("intake_tcia.volume._SliceReader", tuple(map(str, self.sources)), self.frames,
                self.rescale, self.shape, self.dtype.str)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        first, rest = (index[0], index[1:]) if index else (slice(None), ())
        picks = range(self.shape[0])[first]
        ks = [picks] if isinstance(picks, int) else list(picks)
        out = np.empty((len(ks), *self.shape[1:]), dtype=self.dtype)
        for n, k in enumerate(ks):
            self._read_into(out[n], k)
        return out[0][rest] if isinstance(picks, int) else out[(slice(None), *rest)]

    def _read_into(self, out: np.ndarray, k: int) -> None:
        """Decode slice ``k`` and write its rescaled values into ``out``."""
        from pydicom.pixels import pixel_array

        _require_decoder(self.tsyntaxes[k])
        out[...] = pixel_array(self.sources[k], index=self.frames[k])
        slope, intercept = self.rescale[k]
        if out.dtype.kind != "f":
            slope, intercept = int(slope), int(intercept)
        if slope != 1:
            out *= slope
        if intercept != 0:
            out += intercept


def _reader(sources: Sequence[Any], headers: Sequence[Dataset], frames: Sequence[_Frame]
            ) -> _SliceReader:
    """A reader for the frames of one stack, after checking that they can be decoded."""
    tsyntaxes = [_transfer_syntax(ds) for ds in headers]
    for tsyntax in set(tsyntaxes):
        _require_decoder(tsyntax)
    stored, bits = _stored_dtype(headers[frames[0].source])
    dtype = _output_dtype(stored, bits, frames)
    return _SliceReader(sources, frames, tsyntaxes, (len(frames), *frames[0].shape), dtype)

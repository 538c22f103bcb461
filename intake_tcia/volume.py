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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from intake_tcia._geometry import (
    ORIENTATION_ATOL,
    POSITION_ATOL_MM,
    RTOL,
    STACK_ATTRIBUTES,
    TILT_TOL,
    StackKey,
    VolumeGeometryError,
    VolumeGeometryWarning,
    _frame_indices,
    _frame_info,
    _frames_of_all,
    _metadata,
    _select,
    _sort_order,
    _split,
)
from intake_tcia._pixels import _reader
from intake_tcia.datasets import dicom_paths
from intake_tcia.errors import import_optional

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

PathLike = str | os.PathLike


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

"""NIfTI-1 output (nibabel): DICOM's LPS voxel grid turned into NIfTI's RAS convention.

A :class:`~intake_tcia.volume.Volume` array is indexed ``(k, j, i)`` = (slice, row, column)
and its affine maps that index to DICOM patient coordinates LPS (x towards the patient's Left,
y Posterior, z Superior). NIfTI stores ``(i, j, k)``, the column index fastest, and maps it to
RAS world coordinates (x towards the patient's Right, y Anterior, z Superior). So the array is
transposed to ``(i, j, k[, ...])``, the affine's columns are put in ``(i, j, k)`` order and its
first two rows negated (``diag(-1, -1, 1, 1) @ affine``). A voxel keeps its physical place:
``nifti_affine @ [i, j, k, 1]`` is ``[-x, -y, z, 1]`` for the LPS point
``(x, y, z) = volume.affine @ [k, j, i, 1]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import import_optional
from .retrieval.cache import atomic_path

__all__ = ["LPS_TO_RAS", "nifti_affine", "write_nifti"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""numpy.ndarray: 4 x 4 matrix turning DICOM LPS patient coordinates into NIfTI RAS."""


def nifti_affine(affine: np.ndarray) -> np.ndarray:
    """The NIfTI affine (``(i, j, k)`` to RAS mm) of a Volume affine (``(k, j, i)`` to LPS mm).

    Parameters
    ----------
    affine : numpy.ndarray
        4 x 4 :attr:`Volume.affine <intake_tcia.volume.Volume.affine>`.

    Returns
    -------
    numpy.ndarray
        4 x 4 matrix.
    """
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)[:, [2, 1, 0, 3]]


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a ``(z, y, x[, extra])`` array on a Volume grid as a NIfTI-1 file, atomically.

    Parameters
    ----------
    array : numpy.ndarray or dask.array.Array
        ``(k, j, i)`` voxels, or ``(n, k, j, i)`` (written ``(i, j, k, n)``, e.g. masks).
    affine : numpy.ndarray
        The Volume's 4 x 4 LPS affine.
    path : str or os.PathLike
        Ends in ``.nii`` or ``.nii.gz`` (gzip-compressed).

    Returns
    -------
    pathlib.Path
        ``path``; a temporary file beside it is renamed into place only when complete.

    Raises
    ------
    ValueError
        ``path`` does not end in ``.nii`` or ``.nii.gz``, or ``array`` is not 3D or 4D.
    intake_tcia.errors.MissingDependencyError
        nibabel (the ``seg`` extra) is not installed.
    """
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    if not path.name.endswith(suffix):
        raise ValueError(f"a NIfTI file name ends in .nii or .nii.gz, not {path.name!r}")
    nib = import_optional("nibabel", "seg", "NIfTI output")
    data = np.asarray(array)
    if data.ndim == 3:
        data = data.transpose(2, 1, 0)
    elif data.ndim == 4:
        data = data.transpose(3, 2, 1, 0)
    else:
        raise ValueError(f"a NIfTI volume needs a 3D or 4D array, not shape {data.shape}")
    image = nib.Nifti1Image(np.ascontiguousarray(data), nifti_affine(affine))
    image.header.set_xyzt_units("mm")
    with atomic_path(path, suffix=suffix) as temporary:
        nib.save(image, temporary)
    return path

"""RT Dose as a :class:`~intake_tcia.volume.Volume` in Gy.

An RT Dose instance (modality ``RTDOSE``) is one multi-frame grid: (0020,0032) *Image Position
(Patient)* places the first frame, (3004,000C) *Grid Frame Offset Vector* the others, and stored
values times (3004,000E) *Dose Grid Scaling* are the dose. :mod:`intake_tcia.volume` reads both
forms of the offsets that DICOM PS3.3 C.8.8.3.2 allows:

* relative (the first offset is 0): frame ``k`` lies ``offsets[k]`` mm along the slice normal
  from *Image Position (Patient)*;
* absolute (the orientation is axial, ``[1, 0, 0, 0, 1, 0]``, and the first offset equals the
  z of *Image Position (Patient)*): frame ``k`` lies at patient ``z = offsets[k]``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import pydicom

from .volume import Volume, VolumeGeometryError, volume_from_files

__all__ = ["DOSE_ATTRIBUTES", "read_dose"]

DOSE_ATTRIBUTES = ("DoseUnits", "DoseType", "DoseSummationType")
"""tuple[str, ...]: RT Dose attributes copied into :attr:`Volume.metadata`."""


def read_dose(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Volume:
    """Read an RT Dose instance (or the frames of several) as a dose volume.

    Parameters
    ----------
    paths : path-like or iterable of path-like
        The RT Dose file(s) of one dose grid.

    Returns
    -------
    Volume
        ``array`` is float32 dose: stored values times *Dose Grid Scaling*, in Gy when
        (3004,0002) *Dose Units* is ``GY`` (``metadata["DoseUnits"]`` says which). Slices
        ascend along the normal, positioned from *Grid Frame Offset Vector* as above.

    Raises
    ------
    VolumeGeometryError
        A file is not an RT Dose instance, or the frames do not form one grid.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise VolumeGeometryError("no RT Dose file given")
    volume = volume_from_files(paths)
    if volume.metadata.get("Modality") != "RTDOSE":
        raise VolumeGeometryError(
            f"not an RT Dose instance: Modality {volume.metadata.get('Modality')!r} in "
            f"{volume.sources[0]}"
        )
    head = pydicom.dcmread(volume.sources[0], stop_before_pixels=True)
    extra = {name: str(head.get(name)) for name in DOSE_ATTRIBUTES if head.get(name)}
    return dataclasses.replace(volume, array=volume.array.astype("float32", copy=False),
                               metadata={**volume.metadata, **extra})

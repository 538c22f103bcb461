"""Slices of a series as frames, sorted, split into stacks, and checked into one geometry.

The part of :mod:`intake_tcia.volume` that reads no pixels: each 2D image of a series (a
single-frame instance or one frame of a multi-frame one) becomes a :class:`_Frame` holding its
position, orientation, spacing, rescale and stack attributes; frames are sorted along the slice
normal, grouped into stacks, and one stack is checked and turned into an affine. The tolerances,
:data:`STACK_ATTRIBUTES`, :class:`VolumeGeometryError` and :class:`VolumeGeometryWarning` are
documented, and imported, as :mod:`intake_tcia.volume`'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from intake_tcia.errors import TCIAError

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

StackKey = tuple[tuple[str, Hashable], ...]


class VolumeGeometryError(TCIAError, ValueError):
    """The slices do not form one regular volume (the message says why and what to try)."""

    __module__ = "intake_tcia.volume"  # its public home, in tracebacks and pickles


class VolumeGeometryWarning(UserWarning):
    """Slices lack geometry: ordered by InstanceNumber, with an identity affine."""

    __module__ = "intake_tcia.volume"


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

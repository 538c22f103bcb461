"""Pictures of volumes and segmentations: slices shown upright, CT in a window, mask contours.

Public API
----------
:func:`plot_volume` (``Volume.plot()``)
    One slice, or three orthogonal slices through a voxel, in matplotlib.
:func:`plot_segmentation` (``Segmentation.plot()``)
    The same with each segment's outline drawn over the image.
:func:`slice_slider`
    In Jupyter: the picture with an ipywidgets slider over the slices.
:func:`plot`
    Any of the three for a Volume or a Segmentation (what their ``plot()`` methods call).
:data:`WINDOWS`
    Named CT windows (level, width) in HU.

How slices are shown
--------------------
Every panel is shown as radiologists read it, whatever the order of the stored rows, columns
and slices: an axial panel from the feet (anterior up, the patient's right on the viewer's
left), a coronal panel from the front (head up, the patient's right on the left), a sagittal
panel from the patient's left (head up, anterior on the left). A panel counts as axial,
coronal or sagittal by the LPS axis its normal is closest to, and each of its two voxel axes
is flipped as needed; pixels keep their true aspect (mm). Letters on the panel's edges name the
directions (``A``/``P``, ``R``/``L``, ``S``/``I``).

The grey window: ``window=(level, width)`` or a name of :data:`WINDOWS`; by default
``"soft tissue"`` (40, 400) HU for CT, 0 to the largest value for RTDOSE, and the 1st to the
99th percentile of the shown voxels otherwise.

matplotlib is imported only when a picture is asked for (``pip install 'intake-tcia[plot]'``,
included in the ``notebooks`` extra); the slider needs ipywidgets (``notebooks`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import import_optional

# Volume and Segmentation are not imported, not even for typing: their plot() methods import
# this module, and imports run one way.
Volume = Segmentation = Any

__all__ = ["WINDOWS", "plot", "plot_volume", "plot_segmentation", "slice_slider"]

WINDOWS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
}
"""dict: CT windows by name, ``(level, width)`` in HU."""

_AXES = {"z": 0, "y": 1, "x": 2}
# per plane (named by the LPS axis of its normal): the LPS axis shown across (with the sign
# that goes to the right) and the one shown up (with the sign that goes to the top)
_LAYOUT = {
    "axial": ((0, +1), (1, -1)),      # L to the right, A (-y) up
    "coronal": ((0, +1), (2, +1)),    # L to the right, S up
    "sagittal": ((1, +1), (2, +1)),   # P to the right (anterior left), S up
}
_PLANE_OF_NORMAL = {2: "axial", 1: "coronal", 0: "sagittal"}
_LETTERS = {(0, -1): "R", (0, +1): "L", (1, -1): "A", (1, +1): "P", (2, -1): "I", (2, +1): "S"}
_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4")


def _pyplot() -> Any:
    return import_optional("matplotlib.pyplot", "plot", "plotting")


@dataclass(frozen=True)
class _Panel:
    """One 2D cut of a ``(z, y, x)`` array, turned to be shown upright."""

    axis: int           # the voxel axis held fixed (0 = z, 1 = y, 2 = x)
    index: int          # at this index
    across: int         # voxel axis shown left to right
    up: int             # voxel axis shown top to bottom
    flip_across: bool   # reverse ``across`` (its index grows to the left)
    flip_up: bool       # reverse ``up`` (its index grows upward)
    plane: str          # "axial", "coronal" or "sagittal"
    letters: tuple[str, str, str, str]  # left, right, top, bottom

    def cut(self, array: Any) -> np.ndarray:
        """The 2D image of ``array`` (``(z, y, x)``, or ``(n, z, y, x)``) as shown."""
        taken = np.asarray(np.take(array, self.index, axis=self.axis - 3))
        rest = [a for a in range(3) if a != self.axis]  # the two kept axes, in array order
        image = np.moveaxis(taken, [rest.index(self.up) - 2, rest.index(self.across) - 2],
                            [-2, -1])
        if self.flip_up:
            image = image[..., ::-1, :]
        if self.flip_across:
            image = image[..., :, ::-1]
        return image


def _panel(volume: Volume, axis: int, index: int) -> _Panel:
    """The panel holding voxel axis ``axis`` at ``index``, laid out as radiologists read it."""
    directions = volume.direction  # columns: the z, y, x voxel axes in LPS
    kept = [a for a in range(3) if a != axis]
    normal = np.cross(directions[:, kept[0]], directions[:, kept[1]])
    plane = _PLANE_OF_NORMAL[int(np.argmax(np.abs(normal)))]
    (across_lps, across_sign), (up_lps, up_sign) = _LAYOUT[plane]
    across = max(kept, key=lambda a: abs(directions[across_lps, a]))
    up = kept[0] if across == kept[1] else kept[1]
    # flip an axis whose index runs against the direction wanted (to the right, to the top)
    flip_across = directions[across_lps, across] * across_sign < 0
    grows_up = directions[up_lps, up] * up_sign > 0  # index grows towards the top: flip rows
    letters = (_LETTERS[(across_lps, -across_sign)], _LETTERS[(across_lps, across_sign)],
               _LETTERS[(up_lps, up_sign)], _LETTERS[(up_lps, -up_sign)])
    return _Panel(axis, index, across, up, bool(flip_across), bool(grows_up), plane, letters)


def _window(volume: Volume, window: Any, shown: np.ndarray) -> tuple[float, float]:
    """``(vmin, vmax)`` of the grey scale (see the module docstring)."""
    modality = volume.metadata.get("Modality")
    if window is None:
        if modality == "CT":
            window = "soft tissue"
        elif modality == "RTDOSE":
            return 0.0, float(np.max(shown)) or 1.0
        else:
            low, high = np.percentile(shown, [1, 99])
            return float(low), float(high if high > low else low + 1)
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"window must be (level, width) or one of {sorted(WINDOWS)}, "
                             f"not {window!r}")
        window = WINDOWS[window]
    level, width = (float(v) for v in window)
    if not width > 0:
        raise ValueError(f"window width must be > 0, not {width}")
    return level - width / 2, level + width / 2


def _centre(volume: Volume, index: int | Sequence[int] | None, masks: np.ndarray | None
            ) -> tuple[int, int, int]:
    """The voxel the panels go through: given, else the masks' centre, else the middle."""
    shape = volume.shape
    if index is None:
        if masks is not None and masks.any():
            return tuple(int(round(float(c))) for c in  # type: ignore[return-value]
                         np.argwhere(masks.any(axis=0)).mean(axis=0))
        return tuple(n // 2 for n in shape)  # type: ignore[return-value]
    if isinstance(index, (int, np.integer)):
        chosen = [int(index), shape[1] // 2, shape[2] // 2]
    else:
        chosen = [int(i) for i in index]
        if len(chosen) != 3:
            raise ValueError(f"index must be a slice number or (z, y, x), not {index!r}")
    for n, (i, size) in enumerate(zip(chosen, shape, strict=True)):
        if not -size <= i < size:
            raise IndexError(f"index {i} is out of range for axis {'zyx'[n]} of size {size}")
        chosen[n] = i % size
    return tuple(chosen)  # type: ignore[return-value]


def _draw(ax: Any, volume: Volume, panel: _Panel, vmin: float, vmax: float, cmap: str,
          masks: np.ndarray | None, labels: Sequence[str], colours: Sequence[str]) -> Any:
    """Draw one panel (and mask outlines) on ``ax``; the AxesImage."""
    spacing = volume.spacing
    image = ax.imshow(panel.cut(volume.array), cmap=cmap, vmin=vmin, vmax=vmax,
                      interpolation="nearest", origin="upper",
                      aspect=spacing[panel.up] / spacing[panel.across])
    outlines = panel.cut(masks) if masks is not None else ()
    for s, mask in enumerate(outlines):
        if mask.any():
            ax.contour(mask.astype(np.uint8), levels=[0.5], colors=[colours[s]], linewidths=1.2)
            ax.plot([], [], color=colours[s], label=labels[s])
    if any(mask.any() for mask in outlines):
        ax.legend(loc="lower right", fontsize="small", framealpha=0.6)
    left, right, top, bottom = panel.letters
    style = {"color": "yellow", "fontsize": 10, "fontweight": "bold"}
    for text, x, y, ha, va in ((left, 0.01, 0.5, "left", "center"),
                               (right, 0.99, 0.5, "right", "center"),
                               (top, 0.5, 0.99, "center", "top"),
                               (bottom, 0.5, 0.01, "center", "bottom")):
        ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, **style)
    ax.set_title(f"{panel.plane} ({'zyx'[panel.axis]} = {panel.index})", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return image


def _figure(volume: Volume, index: Any, *, orthogonal: bool, window: Any, ax: Any, cmap: str,
            masks: np.ndarray | None = None, labels: Sequence[str] = (),
            colours: Sequence[str] = ()) -> Any:
    plt = _pyplot()
    centre = _centre(volume, index, masks)
    axes_shown = (0, 1, 2) if orthogonal else (0,)
    panels = [_panel(volume, a, centre[a]) for a in axes_shown]
    if ax is not None and orthogonal:
        raise ValueError("ax= takes one panel: not with orthogonal=True")
    if ax is None:
        figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4),
                                    squeeze=False)
        axes = list(axes[0])
    else:
        figure, axes = ax.figure, [ax]
    vmin, vmax = _window(volume, window, panels[0].cut(volume.array))
    images = [_draw(a, volume, p, vmin, vmax, cmap, masks, labels, colours)
              for a, p in zip(axes, panels, strict=True)]
    if ax is None:  # a figure of its own: a colour bar and a title (not in the user's axes)
        unit = {"CT": "HU", "RTDOSE": "Gy"}.get(str(volume.metadata.get("Modality")))
        bar = figure.colorbar(images[-1], ax=axes, shrink=0.8)
        if unit:
            bar.set_label(unit)
        figure.suptitle(_title(volume), fontsize=10)
    return figure


def _title(volume: Volume) -> str:
    words = [volume.metadata.get(k) for k in ("Modality", "SeriesDescription", "PatientID")]
    return " | ".join(w for w in words if w) or "volume"


def plot_volume(volume: Volume, index: int | Sequence[int] | None = None, *,
                orthogonal: bool = False, window: Any = None, ax: Any = None,
                cmap: str = "gray") -> Any:
    """Show a slice of a volume, or three orthogonal slices, upright (see the module doc).

    Parameters
    ----------
    volume : Volume
    index : int or (z, y, x), optional
        The slice (``z`` index) to show, or the voxel the three panels go through; default:
        the middle.
    orthogonal : bool, default False
        Three panels: the stored slice and the two reformats through ``index``.
    window : (level, width) or str, optional
        The grey window (HU for CT), or a name of :data:`WINDOWS`; default by modality.
    ax : matplotlib.axes.Axes, optional
        Draw the one slice there instead of in a new figure.
    cmap : str, default "gray"

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    intake_tcia.errors.MissingDependencyError
        Without matplotlib (``pip install 'intake-tcia[plot]'``).
    """
    return _figure(volume, index, orthogonal=orthogonal, window=window, ax=ax, cmap=cmap)


def plot_segmentation(seg: Segmentation, index: int | Sequence[int] | None = None, *,
                      segments: Sequence[int] | None = None, orthogonal: bool = False,
                      window: Any = None, ax: Any = None, cmap: str = "gray") -> Any:
    """Show the image with each segment's outline, upright, through the masks' centre.

    Parameters
    ----------
    seg : Segmentation
    index : int or (z, y, x), optional
        As in :func:`plot_volume`; default: the centre of the voxels of the masks shown.
    segments : sequence of int, optional
        Segment numbers to outline (``seg.segments["number"]``); default: all.
    orthogonal, window, ax, cmap
        As in :func:`plot_volume`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    numbers = [int(n) for n in seg.segments["number"]]
    chosen = numbers if segments is None else [int(n) for n in segments]
    missing = sorted(set(chosen) - set(numbers))
    if missing:
        raise ValueError(f"no segment(s) {missing}; the segments are {numbers}")
    rows = [numbers.index(n) for n in chosen]
    labels = [str(seg.segments["label"].iloc[r]) for r in rows]
    colours = [_COLOURS[r % len(_COLOURS)] for r in rows]  # a segment keeps its colour
    return _figure(seg.image, index, orthogonal=orthogonal, window=window, ax=ax, cmap=cmap,
                   masks=np.asarray(seg.masks)[rows], labels=labels, colours=colours)


def slice_slider(what: Volume | Segmentation, **options: Any) -> Any:
    """In Jupyter: the picture of :func:`plot_volume` / :func:`plot_segmentation` with an
    ipywidgets slider over the slices (``z``).

    Returns
    -------
    ipywidgets.VBox
        ``children[0]`` is the slider (``IntSlider``), ``children[1]`` the output showing
        the figure; ``.figure`` is the matplotlib figure.

    Raises
    ------
    intake_tcia.errors.MissingDependencyError
        Without ipywidgets (``pip install 'intake-tcia[notebooks]'``).
    """
    widgets = import_optional("ipywidgets", "notebooks", "the slice slider")
    from IPython.display import clear_output, display

    volume = getattr(what, "image", what)
    draw = plot_segmentation if hasattr(what, "masks") else plot_volume
    plt = _pyplot()
    start = _centre(volume, options.pop("index", None), getattr(what, "masks", None))[0]
    slider = widgets.IntSlider(value=start, min=0, max=volume.shape[0] - 1, description="z",
                               continuous_update=False)
    output = widgets.Output()
    box = widgets.VBox([slider, output])

    def show(k: int) -> None:
        old = getattr(box, "figure", None)
        box.figure = draw(what, (k, *_centre(volume, None, getattr(what, "masks", None))[1:]),
                          **options)
        if old is not None:
            plt.close(old)
        with output:
            clear_output(wait=True)
            display(box.figure)

    slider.observe(lambda change: show(int(change["new"])), names="value")
    show(start)
    return box


def plot(what: Volume | Segmentation, index: int | Sequence[int] | None = None, *,
         slider: bool = False, **options: Any) -> Any:
    """``Volume.plot()`` and ``Segmentation.plot()``: :func:`plot_volume` or
    :func:`plot_segmentation`, or with ``slider=True`` :func:`slice_slider`."""
    if slider:
        return slice_slider(what, index=index, **options)
    if hasattr(what, "masks"):
        return plot_segmentation(what, index, **options)
    return plot_volume(what, index, **options)

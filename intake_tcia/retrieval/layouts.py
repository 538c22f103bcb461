"""Where each series goes under a download's ``dest``: layout templates of series metadata.

A layout is a template of series metadata fields (``{Collection}/{PatientID}/...``); each value
is made safe as a folder name, and the folder is asserted to stay inside ``dest``.
"""

from __future__ import annotations

import operator
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._validate import is_reserved_name
from ..schema import SCHEMAS, typed_value

__all__ = [
    "DEFAULT_LAYOUT", "FLAT_LAYOUT", "LAYOUT_FIELDS", "layout_fields", "plain", "series_folder",
    "whole_number",
]

#: Where a download puts each series under ``dest`` by default (as idc-index's dirTemplate).
DEFAULT_LAYOUT = "{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}"
#: One folder per series, named by its UID.
FLAT_LAYOUT = "{SeriesInstanceUID}"
#: The fields a layout may use: series metadata columns (getSeries and getSeriesMetadata).
LAYOUT_FIELDS = frozenset(SCHEMAS["getSeries"].names) & frozenset(
    SCHEMAS["getSeriesMetadata"].names
)
#: Each layout field's kind (``str``, ``int``, ``date``, ``bool``).
_KINDS = {name: SCHEMAS["getSeries"].columns[name] for name in LAYOUT_FIELDS}

_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._+=@,-]+")


def plain(value: Any) -> Any:
    """A metadata value with missing values (NaN, NA, NaT) as None."""
    if isinstance(value, float):
        return None if value != value else value
    scalar = getattr(value, "ndim", 0) == 0  # arrays and frames are values, whatever they hold
    if scalar and type(value).__module__.split(".")[0] in ("pandas", "numpy"):  # NA, NaT, NaN
        import pandas as pd

        return None if pd.isna(value) else value
    return value


def whole_number(value: Any) -> int | None:
    """A count or size (``ImageCount``, ``FileSize``) as an int, from an integer, a whole float
    or their text (``"393360.000000"``, as getSeriesMetadata sends some); None for anything
    else."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if text.isdecimal() else float(text)
        except ValueError:  # not a number, or more digits than int() reads
            return None
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() and value >= 0 else None
    try:
        number = operator.index(value)
    except TypeError:
        return None
    return number if number >= 0 else None


def layout_fields(layout: str) -> set[str]:
    """The fields of a layout template; ValueError for an unknown field or a format spec."""
    if not isinstance(layout, str) or not layout.strip():
        raise ValueError(f"layout must be a non-empty template string, not {layout!r}")
    try:
        parsed = list(string.Formatter().parse(layout))
    except ValueError as exc:
        raise ValueError(f"layout {layout!r} is not a valid template: {exc}") from None
    fields = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in LAYOUT_FIELDS or spec or conversion:
            raise ValueError(
                f"layout field {{{name}}} is not allowed; use plain fields among "
                f"{sorted(LAYOUT_FIELDS)}"
            )
        fields.add(name)
    if "SeriesInstanceUID" not in fields:
        raise ValueError(f"layout {layout!r} must contain {{SeriesInstanceUID}}")
    return fields


def _field_text(name: str, value: Any) -> str:
    """A metadata value as a safe folder name part (no separators, no leading dots, no name
    Windows reserves: ``CON`` becomes ``_CON``). A date, number or flag given as the server's
    text (``"05-27-2015"``, ``"500.000000"``) is typed first, so that it names the same folder
    as the typed value of a DataFrame."""
    kind = _KINDS[name]
    if isinstance(value, str) and kind != "str":  # the text itself where it types to nothing
        typed = plain(typed_value(kind, value))
        value = value if typed is None and value.strip() else typed
    if value is None:
        return "unknown"
    if kind == "date" and hasattr(value, "strftime"):
        value = value.strftime("%Y-%m-%d")
    text = _UNSAFE_CHARACTERS.sub("_", str(value).strip()).lstrip(".")[:128]
    return "_" + text if is_reserved_name(text) else text or "_"


def series_folder(root: Path, layout: str, series_uid: str, metadata: Mapping[str, Any]) -> Path:
    """Where a series goes under ``root``, asserted to stay inside it."""
    values = {name: _field_text(name, metadata.get(name)) for name in layout_fields(layout)}
    values["SeriesInstanceUID"] = series_uid
    folder = (root / layout.format(**values)).resolve()
    if folder == root or root not in folder.parents:
        raise ValueError(f"series {series_uid}: layout {layout!r} gives {folder}, outside {root}")
    return folder

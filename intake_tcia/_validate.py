"""Checks of user-supplied values, made before any request is sent."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

__all__ = [
    "name_problem",
    "validate_uid",
    "validate_text",
    "validate_date",
    "format_query_date",
    "is_reserved_name",
    "validate_file_name",
]

# A DICOM UID (PS3.5 section 9.1): numeric components separated by ".", at most 64 characters.
# The standard also forbids leading zeros ("1.02"), but archives hold such UIDs from real
# scanners, so they are accepted: refusing them would lock users out of real series.
# [0-9], not \d, which also matches other scripts.
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UID_MAX_LENGTH = 64
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_US_DATE = re.compile(r"([0-9]{2})-([0-9]{2})-([0-9]{4})")
# Names Windows gives to devices, with any extension ("aux.txt"), in any case.
_MAX_NAME_BYTES = 255  # a file name's limit on every common file system
_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?", re.IGNORECASE)


def is_reserved_name(name: str) -> bool:
    """bool: True for a name Windows reserves for a device (``CON``, ``aux.txt``, ``com1``)."""
    return _RESERVED.fullmatch(name.rstrip(" .")) is not None


def validate_file_name(value: str, name: str) -> str:
    """Check that ``value`` is one plain file name, safe on every platform, and return it.

    Raises
    ------
    ValueError
        For a path (``/`` or ``\\``), ``.`` or ``..``, a control character, a name Windows
        reserves, or more than 255 characters.
    """
    problem = None
    if not value or value in (".", "..") or "/" in value or "\\" in value:
        problem = "is not a plain file name"
    elif any(ord(ch) < 32 for ch in value) or ":" in value:
        problem = "holds a control character or ':'"
    elif is_reserved_name(value):
        problem = "is a name Windows reserves for a device"
    elif len(value.encode()) > 255:
        problem = "is longer than 255 bytes"
    if problem:
        raise ValueError(f"{name} {value[:100]!r} {problem}")
    return value


def validate_uid(value: Any, name: str = "SeriesInstanceUID") -> str:
    """Check that ``value`` is a DICOM UID and return it without surrounding whitespace.

    Parameters
    ----------
    value : str
        The candidate UID, such as ``"1.3.6.1.4.1.14519.5.2.1.7695.4001.3060"``.
    name : str
        The name of the parameter, used in error messages.

    Returns
    -------
    str
        The stripped UID.

    Raises
    ------
    TypeError
        If ``value`` is not a string.
    ValueError
        If ``value`` is not digits and dots, has an empty component, or is longer than
        64 characters.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}: {value!r}")
    uid = value.strip()
    if len(uid) > _UID_MAX_LENGTH:
        raise ValueError(
            f"{name} {value!r} is not a DICOM UID: {len(uid)} characters, at most "
            f"{_UID_MAX_LENGTH} are allowed"
        )
    if not _UID.fullmatch(uid):
        raise ValueError(
            f"{name} {value!r} is not a DICOM UID: expected numbers separated by dots "
            "(e.g. '1.3.6.1.4.1.14519.5.2.1.7695.4001.3060')"
        )
    return uid


def validate_text(value: Any, name: str) -> str:
    """Check that ``value`` is a non-blank string (a collection, a modality, ...); return it
    stripped. ``TypeError`` for another type, ``ValueError`` naming ``name`` when blank."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}: {value!r}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value.strip()


def validate_date(value: Any, name: str) -> dt.date:
    """Turn a date given in any usual form into a :class:`datetime.date`.

    Parameters
    ----------
    value : datetime.date, datetime.datetime, pandas.Timestamp or str
        Strings are ISO ``"YYYY-MM-DD"`` or NBIA's ``"MM-DD-YYYY"``. A datetime keeps only
        its calendar date (in its own time zone).
    name : str
        The name of the parameter, used in error messages.

    Returns
    -------
    datetime.date

    Raises
    ------
    ValueError
        If ``value`` is of another type, is a missing value (``NaT``), or is not a valid date.
    """
    if isinstance(value, dt.datetime):  # pandas.Timestamp is a datetime subclass
        if value != value:  # NaT never equals itself
            raise ValueError(f"{name} is missing (NaT); give a date such as '2024-05-31'")
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        text = value.strip()
        if match := _ISO_DATE.fullmatch(text):
            year, month, day = match.groups()
        elif match := _US_DATE.fullmatch(text):
            month, day, year = match.groups()
        else:
            raise ValueError(f"{name} {value!r} is not a date: use 'YYYY-MM-DD' or 'MM-DD-YYYY'")
        try:
            return dt.date(int(year), int(month), int(day))
        except ValueError as exc:
            raise ValueError(f"{name} {value!r} is not a valid date: {exc}") from None
    raise ValueError(
        f"{name} must be a date, datetime or 'YYYY-MM-DD' string, not "
        f"{type(value).__name__}: {value!r}"
    )


def format_query_date(d: dt.date) -> str:
    """str: ``d`` as NBIA v4 expects it in queries, ``"MM-DD-YYYY"``."""
    return f"{d.month:02d}-{d.day:02d}-{d.year:04d}"


def name_problem(name: str) -> str | None:
    """Why a name (a zip member's, an object's) cannot be a file of a series folder, or None
    for a plain file name.

    Refused: absolute paths, ``..``, folders (a series is flat), hidden or empty names, NUL,
    names over 255 bytes and names Windows reserves (``CON``, ``aux.txt``).
    """
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in parts:
        return "has a '..' component"
    if len(parts) > 1:
        return "is in a folder (a series folder is flat)"
    if not name or name.startswith(".") or "\0" in name:
        return "is not a plain file name"
    if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES or is_reserved_name(name):
        return "cannot be a file name (over 255 bytes, or a name Windows reserves)"
    return None


"""The two UIDs that tie a DICOM file to its series, read from the file's first bytes.

A series being written checks every file's (0008,0018) *SOP Instance UID* and (0020,000E)
*Series Instance UID*. pydicom's reader builds every element on the way there (about 2 ms a
file); this walks the element headers of the bytes already in memory (PS3.5 section 7) and
stops past (0020,000E), some twenty times faster. Whatever it cannot read for sure (big endian,
deflated, too few bytes, odd structures) it leaves to pydicom by answering None.
"""

from __future__ import annotations

import struct

__all__ = ["header_uids"]

_IMPLICIT = "1.2.840.10008.1.2"
_NOT_READ = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # big endian, deflated
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_SOP, _SERIES = 0x00080018, 0x0020000E
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 16
_pair = struct.Struct("<HH")
_long = struct.Struct("<I")
_short = struct.Struct("<H")


class _Unsure(Exception):
    """These bytes cannot tell (too few, or a structure left to pydicom)."""


def header_uids(head: bytes, *, whole: bool = False) -> tuple[str, str] | None:
    """(SOPInstanceUID, SeriesInstanceUID) of a DICOM file from its first bytes.

    Parameters
    ----------
    head : bytes
        The file's first bytes (preamble, ``DICM``, file meta, dataset).
    whole : bool
        ``head`` is the whole file (so running out of bytes ends the dataset).

    Returns
    -------
    tuple of str, or None
        The two UIDs ("" for one the file lacks), or None when these bytes cannot tell.
    """
    try:
        return _read(head, whole)
    except (_Unsure, struct.error):
        return None


def _read(head: bytes, whole: bool) -> tuple[str, str]:
    if head[128:132] != b"DICM":
        raise _Unsure
    pos, syntax = 132, None
    while pos + 8 <= len(head) and _pair.unpack_from(head, pos)[0] == 0x0002:
        tag, start, length, _ = _element(head, pos, True)
        if tag == 0x00020010:
            syntax = _text(head, start, length)
        pos = start + length
    if syntax is None or syntax in _NOT_READ:
        raise _Unsure
    explicit = syntax != _IMPLICIT
    found = {_SOP: "", _SERIES: ""}
    while pos < len(head) or not whole:
        tag, start, length, vr = _element(head, pos, explicit)
        if tag > _SERIES:
            break
        if length == _UNDEFINED:
            if vr == b"UN":
                raise _Unsure  # its content is implicit VR: left to pydicom
            pos = _skip_sequence(head, start, explicit, 0)
            continue
        if tag in found:
            found[tag] = _text(head, start, length)
        pos = start + length
    return found[_SOP], found[_SERIES]


def _element(head: bytes, pos: int, explicit: bool) -> tuple[int, int, int, bytes | None]:
    """(tag, where the value starts, its length, VR) of the element header at ``pos``."""
    if pos + 8 > len(head):
        raise _Unsure
    group, number = _pair.unpack_from(head, pos)
    tag = group << 16 | number
    if group == 0xFFFE or not explicit:  # items and delimiters have no VR
        return tag, pos + 8, _long.unpack_from(head, pos + 4)[0], None
    vr = head[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(head):
            raise _Unsure
        return tag, pos + 12, _long.unpack_from(head, pos + 8)[0], vr
    return tag, pos + 8, _short.unpack_from(head, pos + 6)[0], vr


def _skip_sequence(head: bytes, pos: int, explicit: bool, depth: int) -> int:
    """Where a sequence of undefined length that starts at ``pos`` ends."""
    if depth > _MAX_DEPTH:
        raise _Unsure
    while True:
        tag, start, length, _ = _element(head, pos, explicit)
        if tag == _SEQUENCE_END:
            return start
        if tag != _ITEM:
            raise _Unsure
        if length != _UNDEFINED:
            pos = start + length
            continue
        pos = start
        while True:  # the elements of an item of undefined length
            tag, start, length, vr = _element(head, pos, explicit)
            if tag == _ITEM_END:
                pos = start
                break
            if length == _UNDEFINED:
                if vr == b"UN":
                    raise _Unsure
                pos = _skip_sequence(head, start, explicit, depth + 1)
            else:
                pos = start + length


def _text(head: bytes, start: int, length: int) -> str:
    if start + length > len(head):
        raise _Unsure
    return head[start : start + length].rstrip(b"\0 ").decode("ascii", "replace").strip()

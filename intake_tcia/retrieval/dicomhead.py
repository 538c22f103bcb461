"""Whether a written DICOM file is a complete instance, and the UIDs that tie it to its series.

A series being written checks every file: its (0008,0018) *SOP Instance UID*, (0020,000D)
*Study* and (0020,000E) *Series Instance UID*, and that it holds all it declares, to its last
byte, with the Pixel Data its Rows, Columns, Samples, Frames and Bits Allocated imply (or every
fragment of encapsulated Pixel Data). pydicom's reader builds every element (about 2 ms a file);
:func:`check_instance` walks the element headers (PS3.5 section 7), mostly in the first bytes
already in memory, and skips each value by its length, reading nothing of the Pixel Data but the
headers of its fragments. Whatever it cannot read for sure (big endian, deflated, odd
structures) it leaves to pydicom by answering None.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

__all__ = ["check_instance", "Instance", "sop_from_head", "sop_instance_uid_of"]

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
_explicit = struct.Struct("<HH2sH")  # an explicit VR element header: tag, VR, short length


class _Unsure(Exception):
    """These bytes cannot tell (too few, or a structure left to pydicom)."""


# -- the whole file: complete, or why not ---------------------------------------------------------
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


def _text(head: bytes, start: int, length: int) -> str:
    if start + length > len(head):
        raise _Unsure
    return head[start : start + length].rstrip(b"\0 ").decode("ascii", "replace").strip()


_STUDY, _ROWS, _COLUMNS, _SAMPLES = 0x0020000D, 0x00280010, 0x00280011, 0x00280002
_FRAMES, _BITS, _PIXELS, _PHOTOMETRIC = 0x00280008, 0x00280100, 0x7FE00010, 0x00280004
_OTHER_PIXELS = frozenset({0x7FE00008, 0x7FE00009})  # Float and Double Float Pixel Data
_WANTED = frozenset(
    {_SOP, _SERIES, _STUDY, _ROWS, _COLUMNS, _SAMPLES, _FRAMES, _BITS, _PHOTOMETRIC}
)
_SMALL = 256  # the values read: UIDs, US and IS numbers
#: Elements the walk looks at (the rest, but items and delimiters, it skips by their length).
_SPECIAL = _WANTED | _OTHER_PIXELS | {_PIXELS}


@dataclass
class Instance:
    """What a DICOM file is: its UIDs ("" for one it lacks) and why it is no complete instance
    (None when it is)."""

    sop: str = ""
    series: str = ""
    study: str = ""
    problem: str | None = None


class _Cut(Exception):
    """The file ends inside what it declares."""


class _Source:
    """A file's bytes: its first ones in memory, the rest read where needed."""

    def __init__(self, head: bytes, size: int, read_at: Callable[[int, int], bytes]) -> None:
        self.head, self.size, self.read_at = head, size, read_at

    def take(self, pos: int, n: int, what: str) -> bytes:
        if pos + n > self.size:
            raise _Cut(what)
        if pos + n <= len(self.head):
            return self.head[pos : pos + n]
        return self.read_at(pos, n)

    def element(self, pos: int, explicit: bool) -> tuple[int, int, int, bytes | None]:
        """(tag, value start, length, VR) of the element header at ``pos``."""
        if pos + 12 <= len(self.head):  # the usual case: no copy
            return _element(self.head, pos, explicit)
        buf = self.take(pos, min(12, self.size - pos), "an element header")
        try:
            tag, start, length, vr = _element(buf, 0, explicit)
        except (_Unsure, struct.error):
            raise _Cut("an element header") from None
        return tag, pos + start, length, vr


def check_instance(
    head: bytes, size: int, read_at: Callable[[int, int], bytes]
) -> Instance | None:
    """Walk a whole DICOM file, element by element, without reading the values it skips.

    Parameters
    ----------
    head : bytes
        The file's first bytes (all of them when it is small).
    size : int
        The file's size.
    read_at : callable
        ``read_at(offset, n)``: ``n`` bytes of the file from ``offset`` (for what lies past
        ``head``: the pixel data's fragments, elements after a large one).

    Returns
    -------
    Instance or None
        Its UIDs and why it is no complete instance: not DICOM, cut inside an element, no SOP
        Instance UID, Rows and Columns but no Pixel Data, less Pixel Data than Rows x Columns x
        Samples x Frames x Bits Allocated / 8, encapsulated Pixel Data without fragments for
        every frame or without its end. None when it cannot tell (big endian, deflated, odd
        structures): pydicom decides.
    """
    if size < 132 or head[128:132] != b"DICM":
        return Instance(problem="is not DICOM (no DICM prefix)")
    source = _Source(head, size, read_at)
    found: dict[int, str] = {}
    try:
        pos, syntax = 132, None
        while pos + 8 <= size and _pair.unpack(source.take(pos, 4, ""))[0] == 0x0002:
            tag, start, length, _ = source.element(pos, True)
            if tag == 0x00020010:
                syntax = _text(source.take(start, length, "the file meta"), 0, length)
            pos = start + length
        if syntax is None and pos >= size:
            return Instance(problem="has no SOP Instance UID (a stub: no file meta, no dataset)")
        if syntax is None or syntax in _NOT_READ:
            return None
        pixels = _walk(source, pos, syntax != _IMPLICIT, found)
        instance = Instance(found.get(_SOP, ""), found.get(_SERIES, ""), found.get(_STUDY, ""),
                            _pixel_problem(found, pixels))
    except _Cut as exc:
        return Instance(found.get(_SOP, ""), found.get(_SERIES, ""), found.get(_STUDY, ""),
                        f"is cut short: the file ends inside {exc}")
    except (_Unsure, struct.error, ValueError):
        return None
    if not instance.sop:
        instance.problem = "has no SOP Instance UID (a stub, or file meta alone)"
    return instance


def _walk(source: _Source, pos: int, explicit: bool, found: dict[int, str]) -> Any:
    """Walk the dataset from ``pos`` to the file's end; the Pixel Data seen: its length, the
    number of fragments (a list) when encapsulated, "other" for float pixel data, or None.

    Bytes after a whole Pixel Data element that do not make an element (trailing padding or
    junk, as some real files carry) end the walk; a file cut before or inside its Pixel Data
    is still cut short."""
    pixels: Any = None
    head, size = source.head, source.size
    fast = len(head) - 12 if explicit else -1  # explicit VR headers read in place up to here
    unpack, unpack_long, long_vrs, special = (_explicit.unpack_from, _long.unpack_from,
                                              _LONG_VRS, _SPECIAL)
    while pos < size:
        try:
            if pos <= fast:  # the usual element: skipped here, in as few steps as can be
                group, number, vr, length = unpack(head, pos)
                if vr in long_vrs:
                    start, length = pos + 12, unpack_long(head, pos + 8)[0]
                else:
                    start = pos + 8
                tag = group << 16 | number
                if (length != _UNDEFINED and start + length <= size and tag not in special
                        and group != 0xFFFE):
                    pos = start + length
                    continue
                if group == 0xFFFE:
                    tag, start, length, vr = source.element(pos, explicit)
            else:
                tag, start, length, vr = source.element(pos, explicit)
            if length == _UNDEFINED:
                if tag == _PIXELS:
                    pos, fragments = _fragments(source, start)
                    pixels = [fragments]
                    continue
                if vr == b"UN" or tag >> 16 == 0xFFFE:
                    raise _Unsure
                pos = _sequence_end(source, start, explicit, 0)
                continue
            if start + length > size:
                raise _Cut(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if tag in _WANTED and length <= _SMALL:
                value = source.take(start, length, "a value")
                found[tag] = (str(_short.unpack(value[:2])[0]) if tag in (_ROWS, _COLUMNS, _SAMPLES,
                              _BITS) and length >= 2 else _text(value, 0, length))
            elif tag == _PIXELS:
                pixels = length
            elif tag in _OTHER_PIXELS:
                pixels = "other"
            pos = start + length
        except _Cut:
            if pixels is None:
                raise
            break  # bytes after whole Pixel Data that are no element: padding or junk, kept
    return pixels


def _fragments(source: _Source, pos: int) -> tuple[int, int]:
    """Where encapsulated Pixel Data starting at ``pos`` ends, and its items (offset table
    included)."""
    items = 0
    while True:
        tag, start, length, _ = source.element(pos, False)
        if tag == _SEQUENCE_END:
            return start, items
        if tag != _ITEM or length == _UNDEFINED:
            raise _Unsure
        if start + length > source.size:
            raise _Cut("the Pixel Data's fragments")
        items += 1
        pos = start + length


def _sequence_end(source: _Source, pos: int, explicit: bool, depth: int) -> int:
    """Where a sequence of undefined length starting at ``pos`` ends."""
    if depth > _MAX_DEPTH:
        raise _Unsure
    while True:
        tag, start, length, _ = source.element(pos, explicit)
        if tag == _SEQUENCE_END:
            return start
        if tag != _ITEM:
            raise _Unsure
        if length != _UNDEFINED:
            if start + length > source.size:
                raise _Cut("a sequence item")
            pos = start + length
            continue
        pos = start
        while True:
            tag, start, length, vr = source.element(pos, explicit)
            if tag == _ITEM_END:
                pos = start
                break
            if length == _UNDEFINED:
                if vr == b"UN":
                    raise _Unsure
                pos = _sequence_end(source, start, explicit, depth + 1)
            elif start + length > source.size:
                raise _Cut("a sequence item")
            else:
                pos = start + length


def _pixel_problem(found: dict[int, str], pixels: Any) -> str | None:
    """Why the Pixel Data is not all there, or None."""
    rows, columns = int(found.get(_ROWS) or 0), int(found.get(_COLUMNS) or 0)
    if pixels is None:
        return "has Rows and Columns but no Pixel Data" if rows and columns else None
    frames = int(float(found.get(_FRAMES) or 1) or 1)
    if isinstance(pixels, list):
        if pixels[0] < 1 + frames:  # the offset table, then at least one fragment a frame
            return (f"holds {max(pixels[0] - 1, 0)} Pixel Data fragments for {frames} "
                    "frame(s)")
        return None
    if not isinstance(pixels, int) or not (rows and columns and found.get(_BITS)):
        return None
    bits = int(found[_BITS])
    samples = int(found.get(_SAMPLES) or 1)
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if found.get(_PHOTOMETRIC, "").startswith("YBR_FULL_422"):  # two samples a pixel
        expected = expected * 2 // 3
    if pixels < expected:
        return (f"holds {pixels} bytes of Pixel Data where Rows {rows} x Columns {columns} x "
                f"Samples {samples} x Frames {frames} x Bits Allocated {bits} need {expected}")
    return None


def sop_instance_uid_of(data: bytes) -> str | None:
    """The (0008,0018) *SOP Instance UID* in the first bytes of a DICOM file (else its file
    meta's), or None if they do not hold it; only the elements before it are parsed."""
    return sop_from_head(data, False)


def sop_from_head(data: bytes, whole: bool) -> str | None:
    """The SOPInstanceUID in the first bytes of a DICOM file, or None if not in them (``whole``:
    ``data`` is the whole file, as the readers of object heads are called)."""
    from pydicom.filereader import read_partial

    try:
        ds = read_partial(BytesIO(data), stop_when=lambda tag, vr, length: tag > 0x00080018)
        uid = ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID")
    except Exception:  # noqa: BLE001 - cut short, or not DICOM: read more, or fail when whole
        return None
    return str(uid) if uid else None

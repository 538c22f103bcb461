"""Zip members as they arrive: a streaming reader of local headers, and the checks on members.

NBIA writes getImage zips with Java's streaming ``ZipOutputStream``: each member is a local
header, its deflate data and a data descriptor with the CRC and sizes (each checked against the
bytes streamed, the CRC-32 too, computed as they pass); the central directory
comes last. :func:`iter_members` reads such a stream front to back and hands over each member's
inflated bytes while the next ones are still on the wire, so nothing waits for the last byte. It
also reads members whose sizes are in the local header (zips written to a seekable file), STORED
members followed by a data descriptor (Python's :mod:`zipfile` on a non-seekable stream) and
zip64 sizes. The central directory is read at the end and checked against what was streamed,
with :func:`check_members`: links, other special files, encrypted members, duplicates and
disagreeing sizes are refused.

Inflating uses ``isal``'s ``isal_zlib`` (about twice zlib's speed here). Nothing here needs a
client or a connection: the input is any iterable of byte chunks.
"""

from __future__ import annotations

import stat
import struct
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from isal import isal_zlib

from .._validate import name_problem
from ..errors import TCIAIntegrityError, TCIAResponseError, UnsafeArchiveError

__all__ = [
    "ZipMember",
    "NotAZipError",
    "iter_members",
    "check_members",
    "MAX_COMPRESSION_RATIO",
]

#: A member inflating more than this (deflate's own limit is about 1032) is a zip bomb.
MAX_COMPRESSION_RATIO = 200
#: Members smaller than this are not judged by their compression ratio.
_RATIO_MIN_SIZE = 1 << 20
_READ = 1 << 18  # compressed bytes handed to the inflater at once
_OUT = 1 << 18  # the most inflated bytes one step makes (a bomb cannot fill memory)
_NAME_LIMIT = 1 << 16

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_DESCRIPTOR = b"PK\x07\x08"
_END = b"PK\x05\x06"
_END64 = b"PK\x06\x06"
_LOCATOR64 = b"PK\x06\x07"
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_CENTRAL_HEADER = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
_MASK32 = 0xFFFFFFFF
_FLAG_ENCRYPTED = 0x1
_FLAG_DESCRIPTOR = 0x8
_FLAG_UTF8 = 0x800


class NotAZipError(UnsafeArchiveError, TCIAResponseError):
    """An answer that is no zip at all (an HTML page, zeros from the first byte): not the
    endpoint's format, refused at its first bytes and not retried, as an unsafe zip is."""


@dataclass
class ZipMember:
    """One member of a zip being read.

    Attributes
    ----------
    name : str
        Its name as the zip gives it (not yet checked: see :func:`name_problem`).
    chunks : iterator of bytes
        Its uncompressed bytes, as they arrive; read it to the end before asking for the next
        member (what is left is skipped). Raises :class:`TCIAIntegrityError` when the data is
        corrupt or cut off, :class:`UnsafeArchiveError` for a zip bomb.
    """

    name: str
    chunks: Iterator[bytes] = field(repr=False)


class _Stream:
    """Bytes read front to back from an iterator of chunks."""

    def __init__(self, chunks: Iterable[bytes], uid: str) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""
        self.uid = uid

    def _fill(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buffer = self._buffer + chunk if self._buffer else bytes(chunk)
                return True
        return False

    def truncated(self, what: str) -> TCIAIntegrityError:
        return TCIAIntegrityError(f"series {self.uid}: the zip is truncated or corrupt: {what}")

    def read(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes."""
        while len(self._buffer) < n:
            if not self._fill():
                raise self.truncated(f"it ends inside {what}")
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def read_some(self, n: int, what: str) -> bytes:
        """Between 1 and ``n`` bytes: what has arrived."""
        if not self._buffer and not self._fill():
            raise self.truncated(f"it ends inside {what}")
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def unread(self, data: bytes) -> None:
        self._buffer = data + self._buffer

    def at_end(self) -> bool:
        return not self._buffer and not self._fill()


@dataclass
class _Local:
    """What a local header and the member's data said."""

    name: str
    flags: int
    method: int
    crc: int
    compressed_size: int
    size: int
    zip64: bool
    streamed_size: int = 0  # uncompressed bytes handed over
    streamed_compressed: int = 0
    streamed_crc: int = 0  # CRC-32 of the uncompressed bytes handed over


def iter_members(
    chunks: Iterable[bytes], uid: str, *, limit: int | None = None
) -> Iterator[ZipMember]:
    """The members of a zip arriving as ``chunks``, each as soon as its header is in.

    The central directory is checked (:func:`check_members`) once the last member is read, so
    the iteration ends normally only for a whole, consistent zip.

    Parameters
    ----------
    chunks : iterable of bytes
        The zip, front to back.
    uid : str
        The series (named in errors).
    limit : int, optional
        The most uncompressed bytes the central directory may declare in all.

    Raises
    ------
    TCIAIntegrityError
        For a truncated or corrupt zip, or members that disagree with the central directory.
    UnsafeArchiveError
        For an encrypted member, an unknown compression method, a zip bomb, or what
        :func:`check_members` refuses.
    """
    stream = _Stream(chunks, uid)
    seen: list[_Local] = []
    while True:
        signature = stream.read(4, "a header")
        if not seen and signature not in (_LOCAL, _END):
            raise NotAZipError(f"series {uid}: the answer is no zip (it starts {signature!r})")
        if signature == _LOCAL:
            local = _read_local(stream)
            seen.append(local)
            data = _member_data(stream, local)
            yield ZipMember(local.name, data)
            for _ in data:  # what the consumer left
                pass
            _read_descriptor(stream, local)
        elif signature in (_CENTRAL, _END):
            stream.unread(signature)
            _read_central(stream, seen, limit)
            return
        else:
            raise stream.truncated(f"unexpected bytes {signature!r} where a header belongs")


def _read_local(stream: _Stream) -> _Local:
    header = stream.read(_LOCAL_HEADER.size - 4, "a local header")
    (_, _, flags, method, _, _, crc, csize, size, name_length, extra_length) = _LOCAL_HEADER.unpack(
        _LOCAL + header
    )
    name = _decode_name(stream.read(name_length, "a member name"), flags)
    extra = stream.read(extra_length, "a local header")
    zip64 = False
    for tag, value in _extra_fields(extra):
        if tag == 1:
            zip64 = True
            values = iter(struct.unpack(f"<{len(value) // 8}Q", value[: len(value) // 8 * 8]))
            if size == _MASK32:
                size = next(values, size)
            if csize == _MASK32:
                csize = next(values, csize)
    if flags & _FLAG_ENCRYPTED:
        raise UnsafeArchiveError(f"series {stream.uid}: zip member {name!r} is encrypted")
    if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise UnsafeArchiveError(
            f"series {stream.uid}: zip member {name!r} uses compression method {method}, "
            "which a series zip does not use"
        )
    return _Local(name, flags, method, crc, csize, size, zip64)


def _decode_name(raw: bytes, flags: int) -> str:
    return raw.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", "surrogateescape")


def _extra_fields(extra: bytes) -> Iterator[tuple[int, bytes]]:
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        yield tag, extra[at + 4 : at + 4 + length]
        at += 4 + length


def _member_data(stream: _Stream, local: _Local) -> Iterator[bytes]:
    """The uncompressed bytes of one member, checked against its declared sizes."""
    described = bool(local.flags & _FLAG_DESCRIPTOR)
    if local.method == zipfile.ZIP_DEFLATED:
        pieces = _inflated(stream, local, None if described else local.compressed_size)
    elif described:
        pieces = _stored_until_descriptor(stream, local)
    else:
        pieces = _stored(stream, local)
    for piece in pieces:
        local.streamed_size += len(piece)
        local.streamed_crc = isal_zlib.crc32(piece, local.streamed_crc)
        yield piece
    if not described and local.streamed_size != local.size:
        raise TCIAIntegrityError(
            f"series {stream.uid}: zip member {local.name} holds {local.streamed_size} bytes, "
            f"declares {local.size}"
        )
    if not described:
        _check_crc(stream, local, local.crc)


def _check_crc(stream: _Stream, local: _Local, declared: int) -> None:
    if declared != local.streamed_crc:
        raise TCIAIntegrityError(
            f"series {stream.uid}: zip member {local.name} has CRC-32 {local.streamed_crc:08x}, "
            f"its zip entry declares {declared:08x}"
        )


def _inflated(stream: _Stream, local: _Local, compressed: int | None) -> Iterator[bytes]:
    inflater = isal_zlib.decompressobj(-15)
    left = compressed
    fed = 0
    while not inflater.eof:
        if left == 0:
            raise stream.truncated(f"the deflate data of {local.name} ends before its end")
        piece = stream.read_some(_READ if left is None else min(_READ, left), "a member's data")
        fed += len(piece)
        if left is not None:
            left -= len(piece)
        while piece:
            try:
                out = inflater.decompress(piece, _OUT)
            except isal_zlib.error as exc:
                raise stream.truncated(f"{local.name}: {exc}") from exc
            piece = inflater.unconsumed_tail
            if out:
                made = local.streamed_size + len(out)
                if made > _RATIO_MIN_SIZE and made > MAX_COMPRESSION_RATIO * fed:
                    raise UnsafeArchiveError(
                        f"series {stream.uid}: zip member {local.name!r} inflates {fed} bytes to "
                        f"over {made} (a zip bomb); refusing it"
                    )
                yield out
    unused = inflater.unused_data
    local.streamed_compressed = fed - len(unused)
    if compressed is not None and local.streamed_compressed != compressed:
        raise stream.truncated(f"the deflate data of {local.name} ends before its declared size")
    if unused:
        stream.unread(unused)


def _stored(stream: _Stream, local: _Local) -> Iterator[bytes]:
    left = local.compressed_size
    while left:
        piece = stream.read_some(min(_READ, left), "a member's data")
        left -= len(piece)
        yield piece
    local.streamed_compressed = local.compressed_size


def _stored_until_descriptor(stream: _Stream, local: _Local) -> Iterator[bytes]:
    """A STORED member of unknown size: its bytes up to the data descriptor whose sizes and CRC
    match what came before it."""
    tail = 24 if local.zip64 else 16  # signature, CRC, two sizes
    window = b""
    crc = 0
    start = 0  # where to look for the next signature in window
    while True:
        at = window.find(_DESCRIPTOR, start)
        if at < 0:
            keep = max(len(window) - 3, 0)  # a signature may begin in the last 3 bytes
            if keep:
                crc = isal_zlib.crc32(window[:keep], crc)
                local.streamed_compressed += keep
                yield window[:keep]
                window = window[keep:]
            window += stream.read_some(_READ, f"the data of {local.name}")
            start = 0
            continue
        while len(window) < at + tail:
            window += stream.read_some(_READ, f"the data of {local.name}")
        if at:
            crc = isal_zlib.crc32(window[:at], crc)
            local.streamed_compressed += at
            yield window[:at]
            window = window[at:]
        fields = struct.unpack("<IQQ" if local.zip64 else "<III", window[4:tail])
        if fields == (crc, local.streamed_compressed, local.streamed_compressed):
            stream.unread(window)  # the descriptor is read next, as for a deflated member
            return
        start = 1  # bytes that happen to look like a signature: data


def _read_descriptor(stream: _Stream, local: _Local) -> None:
    """Read and check a member's data descriptor (when its flag says it has one)."""
    if not local.flags & _FLAG_DESCRIPTOR:
        return
    head = stream.read(4, "a data descriptor")
    if head != _DESCRIPTOR:
        stream.unread(head)  # the signature is optional
    # Java writes 8-byte sizes only for members over 4 GiB; Python when the header had zip64.
    wide = local.zip64 or max(local.streamed_size, local.streamed_compressed) >= _MASK32
    crc, csize, size = struct.unpack(
        "<IQQ" if wide else "<III", stream.read(20 if wide else 12, "a data descriptor")
    )
    if (csize, size) != (local.streamed_compressed, local.streamed_size):
        raise stream.truncated(
            f"{local.name} holds {local.streamed_size} bytes ({local.streamed_compressed} "
            f"compressed), its data descriptor says {size} ({csize})"
        )
    _check_crc(stream, local, crc)
    local.crc, local.compressed_size, local.size = crc, csize, size


def _read_central(stream: _Stream, seen: list[_Local], limit: int | None) -> None:
    """Read the central directory and end records; check them against the members streamed."""
    infos = []
    while (signature := stream.read(4, "the central directory")) == _CENTRAL:
        fields = _CENTRAL_HEADER.unpack(_CENTRAL + stream.read(42, "the central directory"))
        (
            _,
            made_by,
            _,
            flags,
            method,
            _,
            _,
            crc,
            csize,
            size,
            name_length,
            extra_length,
            comment_length,
            _,
            _,
            external,
            _,
        ) = fields
        if name_length > _NAME_LIMIT:  # pragma: no cover - the field is 16 bits
            raise stream.truncated("a central directory name is too long")
        name = _decode_name(stream.read(name_length, "the central directory"), flags)
        extra = stream.read(extra_length, "the central directory")
        stream.read(comment_length, "the central directory")
        for tag, value in _extra_fields(extra):
            if tag == 1:
                values = iter(struct.unpack(f"<{len(value) // 8}Q", value[: len(value) // 8 * 8]))
                if size == _MASK32:
                    size = next(values, size)
                if csize == _MASK32:
                    csize = next(values, csize)
        info = zipfile.ZipInfo(name)
        info.create_system, info.flag_bits, info.compress_type = made_by >> 8, flags, method
        info.CRC, info.compress_size, info.file_size, info.external_attr = (
            crc,
            csize,
            size,
            external,
        )
        infos.append(info)
    check_members(stream.uid, infos, limit)
    if [(i.filename, i.file_size, i.CRC) for i in infos] != [
        (m.name, m.streamed_size, m.streamed_crc) for m in seen
    ]:
        raise stream.truncated("its central directory does not list the members it holds")
    if signature == _END64:
        size64 = struct.unpack("<Q", stream.read(8, "the zip64 end record"))[0]
        stream.read(size64, "the zip64 end record")
        signature = stream.read(4, "the end records")
    if signature == _LOCATOR64:
        stream.read(16, "the zip64 locator")
        signature = stream.read(4, "the end records")
    if signature != _END:
        raise stream.truncated(f"unexpected bytes {signature!r} where the end record belongs")
    end = stream.read(18, "the end record")
    stream.read(struct.unpack_from("<H", end, 16)[0], "the zip comment")
    if not stream.at_end():
        raise stream.truncated("bytes follow its end record")


def check_members(uid: str, members: Iterable[zipfile.ZipInfo], limit: int | None) -> None:
    """Refuse a zip whose members are not plain, distinct files of a plausible total size.

    Parameters
    ----------
    uid : str
        The series (named in errors).
    members : iterable of zipfile.ZipInfo
        The zip's central directory.
    limit : int or None
        The most uncompressed bytes the members may hold in all (None: no limit).

    Raises
    ------
    UnsafeArchiveError
        For a name :func:`name_problem` refuses, a symbolic link or other special file, an
        encrypted member, two members with one name (ignoring case), a member inflating more
        than :data:`MAX_COMPRESSION_RATIO` times, or a total over ``limit``.
    """
    seen: set[str] = set()
    total = 0
    for info in members:
        problem = _member_problem(info, seen)
        if problem:
            raise UnsafeArchiveError(
                f"series {uid}: zip member {info.filename!r} {problem}; refusing it"
            )
        seen.add(info.filename.casefold())
        total += info.file_size
        if limit is not None and total > limit:
            raise UnsafeArchiveError(
                f"series {uid}: the zip inflates to over {total} bytes, more than the {limit} "
                "the series' size allows (a zip bomb); refusing it"
            )


def _member_problem(info: zipfile.ZipInfo, seen: set[str]) -> str | None:
    """Why one zip member is unsafe, or None."""
    problem = name_problem(info.filename)
    if problem:
        return problem
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "is a symbolic link"
    if kind not in (0, stat.S_IFREG):
        return f"is not a regular file (mode {oct(kind)})"
    if info.flag_bits & _FLAG_ENCRYPTED:
        return "is encrypted"
    if info.filename.casefold() in seen:
        return "appears twice"
    if info.file_size > _RATIO_MIN_SIZE and info.file_size > MAX_COMPRESSION_RATIO * max(
        info.compress_size, 1
    ):
        return f"inflates {info.compress_size} bytes to {info.file_size} (a zip bomb)"
    return None


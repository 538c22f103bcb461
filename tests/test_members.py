"""Tests of the streaming zip reader: the layouts NBIA (Java), Python's zipfile and zip64 write,
read in chunks of any size, and the zips it refuses."""

from __future__ import annotations

import random
import struct
import zipfile
import zlib
from collections.abc import Iterator

import pytest

from intake_tcia.errors import TCIAIntegrityError, UnsafeArchiveError
from intake_tcia.nbia.members import iter_members, name_problem

UID = "1.2.3"
BODIES = {
    "LICENSE": b"CC BY 4.0\n",
    "1-1.dcm": bytes(random.Random(1).randbytes(70_000)) + bytes(30_000),
    "1-2.dcm": b"PK\x07\x08" * 5000,  # looks like data descriptors: a STORED scan must not stop
    "empty.dcm": b"",
}


def _java_zip(members: dict[str, bytes]) -> bytes:
    """A zip as Java's streaming ZipOutputStream writes it: deflated members with zero sizes in
    the local header, then a data descriptor (signature, CRC, 4-byte sizes)."""
    out, central = bytearray(), bytearray()
    for name, body in members.items():
        packer = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = packer.compress(body) + packer.flush()
        crc, raw, offset = zlib.crc32(body), name.encode(), len(out)
        out += (
            struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0x808, 8, 0, 0, 0, 0, 0, len(raw), 0)
            + raw
            + data
        )
        out += struct.pack("<4sIII", b"PK\x07\x08", crc, len(data), len(body))
        central += (
            struct.pack(
                "<4sHHHHHHIIIHHHHHII",
                b"PK\x01\x02",
                20,
                20,
                0x808,
                8,
                0,
                0,
                crc,
                len(data),
                len(body),
                len(raw),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + raw
        )
    end = struct.pack(
        "<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0
    )
    return bytes(out + central + end)


class _Pipe:
    """A non-seekable sink: zipfile then writes data descriptors, as on a socket."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass


def _python_zip(
    members: dict[str, bytes], compression: int, *, zip64: bool = False, seekable: bool = False
) -> bytes:
    import io

    sink = io.BytesIO() if seekable else _Pipe()
    with zipfile.ZipFile(sink, "w", compression) as zf:
        for name, body in members.items():
            with zf.open(zipfile.ZipInfo(name), "w", force_zip64=zip64) as f:
                f.write(body)
    return bytes(sink.getvalue() if seekable else sink.data)


def _chunks(data: bytes, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    at = 0
    while at < len(data):
        n = rng.choice([1, 3, 7, 100, 4096, 65536])
        yield data[at : at + n]
        at += n


def _read(data: bytes, seed: int = 0, **options: object) -> dict[str, bytes]:
    return {m.name: b"".join(m.chunks) for m in iter_members(_chunks(data, seed), UID, **options)}


@pytest.mark.parametrize(
    "layout", ["java", "deflated", "stored", "deflated64", "stored64", "seekable"]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_every_layout_reads_back_in_any_chunking(layout: str, seed: int) -> None:
    made = {
        "java": lambda: _java_zip(BODIES),
        "deflated": lambda: _python_zip(BODIES, zipfile.ZIP_DEFLATED),
        "stored": lambda: _python_zip(BODIES, zipfile.ZIP_STORED),
        "deflated64": lambda: _python_zip(BODIES, zipfile.ZIP_DEFLATED, zip64=True),
        "stored64": lambda: _python_zip(BODIES, zipfile.ZIP_STORED, zip64=True),
        "seekable": lambda: _python_zip(BODIES, zipfile.ZIP_DEFLATED, seekable=True),
    }[layout]()
    import io

    with zipfile.ZipFile(io.BytesIO(made)) as zf:  # the reference reader agrees on the zip
        assert {n: zf.read(n) for n in zf.namelist()} == BODIES
    assert _read(made, seed) == BODIES


def test_members_are_handed_over_before_the_zip_has_arrived() -> None:
    made = _python_zip(BODIES, zipfile.ZIP_DEFLATED)
    arrived = [0]

    def source() -> Iterator[bytes]:
        for at in range(0, len(made), 100):
            arrived[0] += len(made[at : at + 100])
            yield made[at : at + 100]

    members = iter_members(source(), UID)
    first = next(members)
    assert first.name == "LICENSE" and b"".join(first.chunks) == BODIES["LICENSE"]
    assert arrived[0] < 1000 < len(made)


@pytest.mark.parametrize("cut", [10, 200, 50_000, -30, -1])
def test_a_cut_zip_is_a_retryable_integrity_error(cut: int) -> None:
    made = _java_zip(BODIES)
    with pytest.raises(TCIAIntegrityError, match="truncated or corrupt") as info:
        _read(made[:cut])
    assert info.value.retryable and UID in str(info.value)


def test_corrupt_data_and_disagreeing_sizes_are_refused() -> None:
    made = bytearray(_java_zip({"a.dcm": bytes(10_000)}))
    flipped = bytes(made[:40]) + bytes([made[40] ^ 0xFF]) + bytes(made[41:])
    with pytest.raises(TCIAIntegrityError):
        _read(flipped)
    at = made.index(b"PK\x07\x08") + 12  # the descriptor's uncompressed size
    made[at : at + 4] = (9_999).to_bytes(4, "little")
    with pytest.raises(TCIAIntegrityError, match="data descriptor says 9999"):
        _read(bytes(made))


def test_the_central_directory_is_checked_links_and_encryption_refused() -> None:
    import io

    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as zf:
        link = zipfile.ZipInfo("link.dcm")
        link.create_system, link.external_attr = 3, 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link") as info:
        _read(sink.getvalue())
    assert not info.value.retryable
    encrypted = bytearray(_java_zip({"a.dcm": b"x"}))
    encrypted[6] |= 1  # the local header's flag bits
    with pytest.raises(UnsafeArchiveError, match="encrypted"):
        _read(bytes(encrypted))


def test_a_bomb_stops_while_it_inflates() -> None:
    bomb = _java_zip({"bomb.dcm": bytes(64 << 20)})
    assert len(bomb) < (1 << 20)
    members = iter_members(_chunks(bomb, 0), UID)
    seen = 0
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        for member in members:
            for chunk in member.chunks:
                seen += len(chunk)
    assert seen < 8 << 20


def test_name_problems() -> None:
    assert name_problem("1-01.dcm") is None
    for bad, why in [
        ("/x.dcm", "absolute"),
        ("C:x", "absolute"),
        ("../x", ".."),
        ("a/b.dcm", "folder"),
        (".hidden", "plain"),
        ("CON", "reserves"),
        ("x" * 256, "255"),
    ]:
        assert why in name_problem(bad), bad

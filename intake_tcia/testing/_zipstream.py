"""Stream a series as NBIA's getImage zip (reference/getImage_zip_layouts.txt).

The zip is written with :mod:`zipfile` onto a non-seekable writer (data descriptors, as Java's
ZipOutputStream does), one file block at a time, so memory does not grow with the series. MD5s are
computed on the way. Hostile members (faults) are added before ``md5hashes.csv``. Deflate runs at
level 1 (NBIA's Java default is 6: other bytes, same format, several times faster here).
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

_BLOCK = 1 << 20
_ZIP64_LIMIT = 1 << 31


def _info(name: str, compression: int, size: int = 0) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = compression
    info.file_size = size
    info.external_attr = 0o644 << 16
    return info


def write_series_zip(
    out: IO[bytes],
    files: Sequence[tuple[str, Path]],
    *,
    license_text: str | None,
    include_md5: bool,
    compression: int,
    stopped: Callable[[], bool],
    wrong_md5: int | None = None,
    hostile: str | None = None,
    hostile_params: dict[str, Any] | None = None,
) -> None:
    """Write the zip of ``files`` (``(name in zip, path)``) to ``out``.

    Parameters
    ----------
    out : file-like
        A writable, non-seekable stream.
    files : sequence of (str, pathlib.Path)
        Entry names and the files they hold, in order.
    license_text : str or None
        Written first as ``LICENSE`` (getImage); None leaves it out (getImageWithMD5Hash).
    include_md5 : bool
        End with ``md5hashes.csv`` (``Filename,MD5Hash``, unquoted).
    compression : int
        ``zipfile.ZIP_DEFLATED`` (the server's default) or ``zipfile.ZIP_STORED``.
    stopped : callable
        Returns True once nothing more can be sent (client gone, stream cut): stop early.
    wrong_md5 : int, optional
        Index of the DICOM entry whose listed MD5 is wrong (fault).
    hostile, hostile_params : optional
        A hostile member to add (see :mod:`intake_tcia.testing.faults`).
    """
    hashes: list[tuple[str, str]] = []
    with zipfile.ZipFile(out, "w", compression=compression, allowZip64=True,
                         compresslevel=1) as zf:
        if license_text is not None:
            zf.writestr(_info("LICENSE", compression), license_text)
        for name, path in files:
            if stopped():
                return
            size = path.stat().st_size
            digest = hashlib.md5()
            with open(path, "rb") as src, zf.open(_info(name, compression, size), "w",
                                                  force_zip64=size > _ZIP64_LIMIT) as dst:
                while block := src.read(_BLOCK):
                    digest.update(block)
                    dst.write(block)
            hashes.append((name, digest.hexdigest()))
        if hostile is not None:
            _hostile_member(zf, hostile, hostile_params or {}, files, compression)
        if include_md5:
            if wrong_md5 is not None and hashes:
                index = min(wrong_md5, len(hashes) - 1)
                hashes[index] = (hashes[index][0], hashlib.md5(b"wrong").hexdigest())
            table = "Filename,MD5Hash\n" + "".join(f"{n},{h}\n" for n, h in hashes)
            zf.writestr(_info("md5hashes.csv", compression), table)


def _hostile_member(
    zf: zipfile.ZipFile, kind: str, params: dict[str, Any],
    files: Sequence[tuple[str, Path]], compression: int,
) -> None:
    payload = b"intake-tcia sample archive: hostile zip member\n"
    if kind == "absolute_path":
        zf.writestr(_info("/tmp/intake-tcia-evil.dcm", compression), payload)
    elif kind == "dotdot":
        zf.writestr(_info("../../intake-tcia-evil.dcm", compression), payload)
    elif kind == "symlink":
        info = _info("link.dcm", zipfile.ZIP_STORED)
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, str(params.get("target", "/etc/passwd")))
    elif kind == "duplicate":
        name = files[0][0] if files else "00000001.dcm"
        zf.NameToInfo.pop(name, None)  # so zipfile does not warn "Duplicate name"
        zf.writestr(_info(name, compression), payload)
    elif kind == "bomb":
        size = int(params.get("size", 256 << 20))
        info = _info("bomb.dcm", zipfile.ZIP_DEFLATED, size)
        zeros = bytes(_BLOCK)
        with zf.open(info, "w", force_zip64=size > _ZIP64_LIMIT) as dst:
            for start in range(0, size, _BLOCK):
                dst.write(zeros[: min(_BLOCK, size - start)])
    else:  # pragma: no cover - FaultPlan validates kinds
        raise ValueError(kind)

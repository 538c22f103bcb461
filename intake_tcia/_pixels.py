"""Pixels of the frames of one stack: decoder checks, output dtype, and a lazy slice reader.

The part of :mod:`intake_tcia.volume` that decodes: :func:`_reader` checks that every transfer
syntax can be decoded, picks the output dtype from the rescale of the frames, and returns a
:class:`_SliceReader`, an array-like that decodes and rescales slices when indexed (eagerly as
``reader[:]``, or chunk by chunk under dask).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from intake_tcia._geometry import VolumeGeometryError, _Frame
from intake_tcia.errors import MissingDependencyError

_INTEGER_DTYPES = tuple(np.dtype(t) for t in ("u1", "i1", "u2", "i2", "u4", "i4", "i8"))


def _transfer_syntax(ds: Dataset) -> str | None:
    """(0002,0010) *Transfer Syntax UID* of a dataset, if known."""
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(value) if value else None


@lru_cache(maxsize=64)
def _require_decoder(tsyntax: str | None) -> None:
    """Raise :class:`MissingDependencyError` if no plugin can decode ``tsyntax``."""
    if tsyntax is None or not pydicom.uid.UID(tsyntax).is_compressed:
        return
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise MissingDependencyError(
            f"pydicom cannot decode transfer syntax {tsyntax} ({exc})"
        ) from exc
    if not decoder.is_available:
        raise MissingDependencyError(
            f"decoding {pydicom.uid.UID(tsyntax).name} pixel data needs a plugin: "
            f"pip install 'intake-tcia[jpeg]' ({'; '.join(decoder.missing_dependencies)})"
        )


def _stored_dtype(ds: Dataset) -> tuple[np.dtype, int]:
    """Dtype pydicom decodes a slice to, and (0028,0101) *Bits Stored*."""
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        raise VolumeGeometryError("only single-sample (grayscale) images form a volume")
    allocated = int(ds.BitsAllocated)
    kind = "i" if int(ds.get("PixelRepresentation") or 0) else "u"
    return np.dtype(f"{kind}{max(allocated, 8) // 8}"), int(ds.get("BitsStored") or allocated)


def _output_dtype(stored: np.dtype, bits: int, frames: Sequence[_Frame]) -> np.dtype:
    """Stored dtype if nothing to rescale, smallest integer dtype if integral, else float32."""
    pairs = {(f.slope, f.intercept) for f in frames}
    if pairs == {(1.0, 0.0)}:
        return stored
    if not all(s.is_integer() and b.is_integer() for s, b in pairs):
        return np.dtype("float32")
    signed = stored.kind == "i"
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = [v * s + b for s, b in pairs for v in (low, high)]
    for dtype in _INTEGER_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= min(ends) and max(ends) <= info.max:
            return dtype
    return np.dtype("float64")


class _SliceReader:
    """Array-like reading and rescaling slices on demand; picklable for dask workers."""

    ndim = 3

    def __init__(self, sources: Sequence[Any], frames: Sequence[_Frame],
                 tsyntaxes: Sequence[str | None], shape: tuple[int, int, int],
                 dtype: np.dtype) -> None:
        self.sources = tuple(sources[f.source] for f in frames)
        self.frames = tuple(f.frame for f in frames)
        self.tsyntaxes = tuple(tsyntaxes[f.source] for f in frames)
        self.rescale = tuple((f.slope, f.intercept) for f in frames)
        self.shape = shape
        self.dtype = dtype

    def __dask_tokenize__(self) -> Hashable:
        return ("intake_tcia.volume._SliceReader", tuple(map(str, self.sources)), self.frames,
                self.rescale, self.shape, self.dtype.str)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        first, rest = (index[0], index[1:]) if index else (slice(None), ())
        picks = range(self.shape[0])[first]
        ks = [picks] if isinstance(picks, int) else list(picks)
        out = np.empty((len(ks), *self.shape[1:]), dtype=self.dtype)
        for n, k in enumerate(ks):
            self._read_into(out[n], k)
        return out[0][rest] if isinstance(picks, int) else out[(slice(None), *rest)]

    def _read_into(self, out: np.ndarray, k: int) -> None:
        """Decode slice ``k`` and write its rescaled values into ``out``."""
        from pydicom.pixels import pixel_array

        _require_decoder(self.tsyntaxes[k])
        out[...] = pixel_array(self.sources[k], index=self.frames[k])
        slope, intercept = self.rescale[k]
        if out.dtype.kind != "f":
            slope, intercept = int(slope), int(intercept)
        if slope != 1:
            out *= slope
        if intercept != 0:
            out += intercept


def _reader(sources: Sequence[Any], headers: Sequence[Dataset], frames: Sequence[_Frame]
            ) -> _SliceReader:
    """A reader for the frames of one stack, after checking that they can be decoded."""
    tsyntaxes = [_transfer_syntax(ds) for ds in headers]
    for tsyntax in set(tsyntaxes):
        _require_decoder(tsyntax)
    stored, bits = _stored_dtype(headers[frames[0].source])
    dtype = _output_dtype(stored, bits, frames)
    return _SliceReader(sources, frames, tsyntaxes, (len(frames), *frames[0].shape), dtype)

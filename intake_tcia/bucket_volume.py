"""A series on IDC as a lazy volume whose chunks GET their own objects, inside their tasks.

:func:`bucket_volume` lists the series' objects and reads the head of each (a ranged GET that
stops before the pixel data; the whole object only when it is smaller than the first read), which
gives the slice order and the geometry; nothing else is downloaded where it is called. Each chunk
(one slice) GETs its object when computed, in whatever process computes it: a dask worker builds
its own client from the settings the array carries (:func:`intake_tcia.cohort.process_client`),
checks the body against the listing (size, and MD5 where the ETag is one), decodes and rescales
it. A frame of a multi-frame object of uncompressed pixels is read alone, by a ranged GET of its
bytes (where the head showed the frames start, the pixel data's length matching its frames),
asked with ``If-Match`` the listed ETag and checked for length: the object's MD5 covers only the
whole object. Nothing is written to any cache.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from ._geometry import RTOL, StackKey, _frames_of_all, _metadata, _select
from ._pixels import _reader, _SliceReader
from ._validate import validate_uid
from .client import TCIAClient
from .errors import TCIAIntegrityError, import_optional
from .idc import bucket
from .retrieval.pipeline import import_readers
from .volume import Volume

if TYPE_CHECKING:
    from .config import Settings
    from .idc.backend import IDCBackend
    from .idc.bucket import IDCObject

__all__ = ["bucket_volume"]


@dataclass(frozen=True)
class _ObjectRef:
    """One instance's object: where it is and what its listing says; for a multi-frame object
    of uncompressed pixels, where its frames start and a header to decode one frame with."""

    bucket: str
    obj: IDCObject
    frames_at: int | None = None
    frame_bytes: int = 0
    frame_header: Dataset | None = None

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.obj.key}"


#: Uncompressed transfer syntaxes, whose frames lie one after another in the object.
_NATIVE = {"1.2.840.10008.1.2": 8, "1.2.840.10008.1.2.1": 12}  # -> bytes before the value
#: What decoding one uncompressed frame needs of a header.
_FRAME_KEYWORDS = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
                   "HighBit", "PixelRepresentation", "PhotometricInterpretation",
                   "PlanarConfiguration")


def _head_and_frames(data: bytes, whole: bool) -> tuple[Dataset, int | None] | None:
    """A head's header, and where the pixel data's value starts when the object holds
    several uncompressed frames (None otherwise); None when the head is too short."""
    header = bucket.header_from_head(data, whole)
    if header is None:
        return None
    at = data.find(bucket.PIXEL_DATA_TAG, 132)
    syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", ""))
    frames = int(header.get("NumberOfFrames") or 1)
    if at < 0 or syntax not in _NATIVE or frames < 2 or at + _NATIVE[syntax] > len(data):
        return header, None
    start = at + _NATIVE[syntax]
    expected = frames * _frame_bytes(header)
    length = int.from_bytes(data[start - 4:start], "little")
    if not expected or length not in (expected, expected + 1):  # e.g. an icon's pixel data
        return header, None
    return header, start


def _frame_bytes(header: Dataset) -> int:
    """Bytes of one uncompressed frame (0 when bits do not fill whole bytes)."""
    bits = int(header.get("BitsAllocated") or 0)
    if bits % 8:
        return 0
    samples = int(header.get("SamplesPerPixel") or 1)
    return int(header.get("Rows") or 0) * int(header.get("Columns") or 0) * samples * bits // 8


def _frame_header(header: Dataset) -> Dataset:
    """A one-frame header (pixel attributes and transfer syntax only) to decode a frame."""
    from pydicom.dataset import FileMetaDataset

    one = Dataset()
    one.file_meta = FileMetaDataset()
    one.file_meta.TransferSyntaxUID = header.file_meta.TransferSyntaxUID
    for keyword in _FRAME_KEYWORDS:
        if keyword in header:
            setattr(one, keyword, header.get(keyword))
    one.NumberOfFrames = 1
    return one


def bucket_volume(
    client: TCIAClient,
    series_uid: str,
    *,
    stack: StackKey | int | None = None,
    rtol: float = RTOL,
    allow_tilt: bool = False,
) -> Volume:
    """A series held by IDC as a lazy :class:`~intake_tcia.volume.Volume`, read from the bucket
    chunk by chunk (one chunk per slice, one GET each, where the chunk is computed).

    Parameters
    ----------
    client : TCIAClient
        Names the index and the bucket endpoint; its settings travel with the array.
    series_uid : str
        The SeriesInstanceUID.
    stack, rtol, allow_tilt
        As in :func:`intake_tcia.volume.volume_from_files`.

    Raises
    ------
    TCIANotFoundError
        The IDC index does not list the series.
    TCIAIntegrityError
        The bucket lists another number of objects than the index.
    VolumeGeometryError
        As :func:`intake_tcia.volume.volume_from_files`.
    """
    da = import_optional("dask.array", "dask", "Lazy volumes")
    from dask.base import tokenize

    uid = validate_uid(series_uid, "series_uid")
    idc = client.router.idc
    where = idc.location(uid)
    budget = idc.transport.budget()
    objects = bucket.list_objects(idc, where, budget=budget)
    if where.instance_count is not None and len(objects) != where.instance_count:
        raise TCIAIntegrityError(
            f"series {uid}: the bucket lists {len(objects)} objects under "
            f"s3://{where.bucket}/{where.prefix}, the IDC index says {where.instance_count}")
    import_readers()  # before the threads parse heads

    def head(obj: IDCObject) -> Any:
        return bucket.read_head(idc, where, obj, budget, _head_and_frames)

    with ThreadPoolExecutor(max(1, min(client.settings.workers, len(objects)))) as pool:
        found = list(pool.map(head, objects))
    heads = [header for header, _ in found]
    refs = [
        _ObjectRef(where.bucket, obj) if start is None else _ObjectRef(
            where.bucket, obj, start, _frame_bytes(header), _frame_header(header))
        for obj, (header, start) in zip(objects, found, strict=True)
    ]
    key, frames, affine, positions, spacing = _select(
        _frames_of_all(heads), stack=stack, rtol=rtol, allow_tilt=allow_tilt
    )
    reader = _BucketSliceReader(_reader(refs, heads, frames), client.settings)
    array = da.from_array(
        reader, chunks=(1, *reader.shape[1:]), name=f"tcia-idc-volume-{tokenize(reader)}",
        meta=np.empty((0, 0, 0), reader.dtype), fancy=False,
    )
    return Volume(
        array=array, affine=affine, positions=positions, spacing=spacing,
        sources=tuple(str(refs[f.source]) for f in frames), frames=tuple(f.frame for f in frames),
        stack=key, metadata=_metadata(heads[frames[0].source]),
    )


class _BucketSliceReader(_SliceReader):
    """The slice reader of :mod:`intake_tcia.volume` whose sources are bucket objects, each
    fetched (and checked) by the process that reads its slice; pickles with the settings."""

    def __init__(self, base: _SliceReader, settings: Settings) -> None:
        self.__dict__.update(base.__dict__)
        self.settings = settings

    def _read_into(self, out: np.ndarray, k: int) -> None:
        from .cohort import process_client

        client = process_client(self.settings, TCIAClient)
        ref, frame = self.sources[k], self.frames[k]
        fetched = copy.copy(self)  # the same reader, slice k's source now the bytes
        if ref.frames_at is not None and frame is not None:  # only this frame's bytes
            one = copy.copy(ref.frame_header)
            one.PixelData = _get_frame(client.router.idc, ref, frame)
            fetched.sources, fetched.frames = {k: one}, {k: None}  # type: ignore[assignment]
        else:
            data = _get_object(client.router.idc, ref)
            fetched.sources = {k: BytesIO(data)}  # type: ignore[assignment]
        _SliceReader._read_into(fetched, out, k)


def _get_object(idc: IDCBackend, ref: _ObjectRef) -> bytes:
    """One object's bytes (one GET, retried on one budget), its listed size and MD5."""
    budget = idc.transport.budget()
    url = bucket.object_url(idc, ref.bucket, ref.obj.key)

    def attempt() -> bytes:
        data = bytes(bucket.read_object(idc, url, None, budget, limit=ref.obj.size))
        problem = bucket.object_problem(data, ref.obj)
        if problem is not None:
            raise TCIAIntegrityError(f"object {ref.obj.key}: {problem}")
        return data

    return budget.run(attempt)


def _get_frame(idc: IDCBackend, ref: _ObjectRef, frame: int) -> bytes:
    """One frame's bytes of an uncompressed multi-frame object: one ranged GET, asked only of
    the object as listed (``If-Match`` its ETag, where that is its MD5), checked for length."""
    assert ref.frames_at is not None
    budget = idc.transport.budget()
    url = bucket.object_url(idc, ref.bucket, ref.obj.key)
    first = ref.frames_at + frame * ref.frame_bytes
    headers = {"Range": f"bytes={first}-{first + ref.frame_bytes - 1}"}
    if ref.obj.md5 is not None:
        headers["If-Match"] = f'"{ref.obj.md5}"'

    def attempt() -> bytes:
        data = bytes(bucket.read_object(idc, url, None, budget, headers, limit=ref.frame_bytes))
        if len(data) != ref.frame_bytes:
            raise TCIAIntegrityError(f"{ref.obj.key}: frame {frame}: {len(data)} bytes "
                                     f"received, {ref.frame_bytes} asked for")
        return data

    return budget.run(attempt)

"""A series on IDC as a lazy volume whose chunks GET their own objects, inside their tasks.

:func:`bucket_volume` lists the series' objects and reads the head of each (a ranged GET that
stops before the pixel data; the whole object only when it is smaller than the first read), which
gives the slice order and the geometry; nothing else is downloaded where it is called. Each chunk
(one slice) GETs its object when computed, in whatever process computes it: a dask worker builds
its own client from the settings the array carries (:func:`intake_tcia.cohort.process_client`),
checks the body against the listing (size, and MD5 where the ETag is one), decodes and rescales
it. Nothing is written to any cache.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

import numpy as np

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
    """One instance's object: where it is and what its listing says."""

    bucket: str
    obj: IDCObject

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.obj.key}"


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
    idc = client._router.idc
    where = idc.location(uid)
    budget = idc.transport.budget()
    objects = bucket.list_objects(idc, where, budget=budget)
    if where.instance_count is not None and len(objects) != where.instance_count:
        raise TCIAIntegrityError(
            f"series {uid}: the bucket lists {len(objects)} objects under "
            f"s3://{where.bucket}/{where.prefix}, the IDC index says {where.instance_count}")
    import_readers()  # before the threads parse heads

    def head(obj: IDCObject) -> Any:
        return bucket._head(idc, where.bucket, obj, budget, bucket._header_from_head)

    with ThreadPoolExecutor(max(1, min(client.settings.workers, len(objects)))) as pool:
        heads = list(pool.map(head, objects))
    refs = [_ObjectRef(where.bucket, obj) for obj in objects]
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
        data = _get_object(client._router.idc, self.sources[k])
        fetched = copy.copy(self)  # the same reader, slice k's source now the bytes
        fetched.sources = {k: BytesIO(data)}  # type: ignore[assignment]
        _SliceReader._read_into(fetched, out, k)


def _get_object(idc: IDCBackend, ref: _ObjectRef) -> bytes:
    """One object's bytes (one GET, retried on one budget), its listed size and MD5."""
    budget = idc.transport.budget()
    url = bucket._object_url(idc, ref.bucket, ref.obj.key)

    def attempt() -> bytes:
        data = bytes(bucket._read_all(idc, url, None, budget, limit=ref.obj.size))
        problem = bucket._problem(data, ref.obj)
        if problem is not None:
            raise TCIAIntegrityError(problem)
        return data

    return budget.run(attempt)

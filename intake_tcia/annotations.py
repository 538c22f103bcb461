"""Which annotation series (SEG, RTSTRUCT, RTDOSE) refer to an image series, and reading them.

An annotation names the image series it was made on inside its header: SEG in (0008,1115)
*Referenced Series Sequence*, RTSTRUCT in (3006,0010) *Referenced Frame of Reference Sequence* >
*RT Referenced Study* > *RT Referenced Series*. Both hold a nested (0020,000E) *Series Instance
UID*, the only nested one in these headers. RTDOSE names an RT Plan, not images: it refers to an
image series through their shared (0020,0052) *Frame of Reference UID*.

Headers come from the cache when the series is there (its first file, no request), else from
``getDicomTags`` (one instance's header, a small JSON answer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from .errors import TCIANotFoundError
from .retrieval.cache import CachedSeries, SeriesCache

if TYPE_CHECKING:
    from .segmentation import Segmentation

__all__ = ["ANNOTATION_MODALITIES", "annotations", "read_annotation_series"]

ANNOTATION_MODALITIES = ("SEG", "RTSTRUCT", "RTDOSE")
"""tuple[str, ...]: Modalities :meth:`TCIAClient.annotations` looks for."""

_SERIES_UID, _FRAME_UID = "(0020,000E)", "(0020,0052)"


class _Archive(Protocol):
    """What these functions use of :class:`~intake_tcia.client.TCIAClient`."""

    cache: SeriesCache

    def series(self, **filters: Any) -> pd.DataFrame: ...

    def dicom_tags(self, series_uid: str, *, collection: str | None = None) -> pd.DataFrame: ...

    def fetch_series(self, series_uid: str, *, collection: str | None = None
                     ) -> CachedSeries: ...


def _walk(ds: Any, depth: int = 0) -> Iterator[tuple[int, str, Any]]:
    """``(depth, "(gggg,eeee)", value)`` of every element of a dataset, sequences entered."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item, depth + 1)
        else:
            yield depth, f"({elem.tag.group:04X},{elem.tag.element:04X})", elem.value


def _header_references(client: _Archive, series_uid: str, collection: str | None
                       ) -> tuple[str | None, set[str]]:
    """A series' own Frame of Reference UID and the series UIDs its header names."""
    import pydicom

    cached = client.cache.get(series_uid)
    if cached is not None and cached.instances:
        ds = pydicom.dcmread(cached.files[0], stop_before_pixels=True)
        elements = [(d, tag, str(v)) for d, tag, v in _walk(ds)]
    else:
        tags = client.dicom_tags(series_uid, collection=collection)
        elements = [(len(e) - len(e.lstrip(">")), e.lstrip(">"), str(v))
                    for e, v in zip(tags.get("element", []), tags.get("data", []), strict=True)
                    if isinstance(e, str) and not pd.isna(v)]
    frame = next((v for d, tag, v in elements if d == 0 and tag == _FRAME_UID), None)
    return frame, {v.strip() for d, tag, v in elements if d > 0 and tag == _SERIES_UID}


def annotations(client: _Archive, series_uid: str, *, collection: str | None = None
                ) -> pd.DataFrame:
    """The SEG, RTSTRUCT and RTDOSE series of the image series' study that refer to it.

    See :meth:`TCIAClient.annotations <intake_tcia.client.TCIAClient.annotations>`.
    """
    image = client.series(series_uid=series_uid, collection=collection)
    if image.empty:
        raise TCIANotFoundError(404, f"no series {series_uid}", "getSeries")
    collection = str(image["Collection"].iloc[0])
    study = client.series(study_uid=str(image["StudyInstanceUID"].iloc[0]),
                          collection=collection)
    candidates = study[study["Modality"].isin(ANNOTATION_MODALITIES)
                       & (study["SeriesInstanceUID"] != series_uid)]
    image_frame: list[str | None] = []
    kept, how = [], []
    for n, uid in enumerate(candidates["SeriesInstanceUID"]):
        frame, referenced = _header_references(client, uid, collection)
        if series_uid in referenced:
            kept.append(n)
            how.append("series")
        elif not referenced and frame is not None:
            if not image_frame:
                image_frame.append(_header_references(client, series_uid, collection)[0])
            if frame == image_frame[0]:
                kept.append(n)
                how.append("frame of reference")
    out = candidates.iloc[kept].reset_index(drop=True)
    out["ReferencedSeriesInstanceUID"] = pd.Series([series_uid] * len(out), dtype=object)
    out["ReferencedBy"] = pd.Series(how, dtype=object)
    return out


def read_annotation_series(client: _Archive, series_uid: str, *,
                           collection: str | None = None, **options: Any) -> Segmentation:
    """A SEG or RTSTRUCT series and the image series it names, as a Segmentation.

    See :meth:`TCIAClient.read_segmentation
    <intake_tcia.client.TCIAClient.read_segmentation>`.
    """
    import pydicom

    from .segmentation import SegmentationError, read_segmentation

    files = client.fetch_series(series_uid, collection=collection).files
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    if head.get("Modality") not in ("SEG", "RTSTRUCT"):
        hint = (" (a dose grid: read it with intake_tcia.dose.read_dose("
                "c.fetch_series(uid).files))" if head.get("Modality") == "RTDOSE" else "")
        raise SegmentationError(
            f"series {series_uid} is {head.get('Modality')!r}, not a SEG or RTSTRUCT{hint}")
    referenced = sorted({str(v) for d, tag, v in _walk(head) if d > 0 and tag == _SERIES_UID})
    if not referenced:
        raise SegmentationError(f"{head.Modality} series {series_uid} names no image series "
                                "it refers to; pass the image files to read_segmentation")
    if len(referenced) > 1:
        raise SegmentationError(f"{head.Modality} series {series_uid} refers to "
                                f"{len(referenced)} series ({', '.join(referenced)}); read it "
                                "with read_segmentation(files, image_files) on the one you want")
    image_files = client.fetch_series(referenced[0], collection=collection).files
    return read_segmentation(files, image_files, **options)

"""Which source serves a series' files: NBIA's getImage or IDC's bucket (``settings.backend``).

design.md, "Two backends": ``"nbia"`` and ``"idc"`` use only that source. ``"auto"`` takes the
files from IDC when the index lists the series with NBIA's instance count, else from getImage,
and when one source fails it tries the other before the series counts as failed. Whatever the
backend, a series already in the cache is served from there, whichever source put it there.

The same choice serves single instances, instance listings and headers (``tcia://``,
``discover()``): on ``"auto"`` NBIA answers, and IDC does when NBIA cannot be reached.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ._validate import validate_uid
from .errors import MissingDependencyError, TCIAConnectionError, TCIAError, TCIANotFoundError

if TYPE_CHECKING:
    from .cache import CachedSeries
    from .client import TCIAClient
    from .idc_fetch import IDCLocation

__all__ = [
    "fetch_series", "file_sources", "import_readers", "locate_ahead", "on_files_backend",
]

log = logging.getLogger("intake_tcia")

T = TypeVar("T")


#: IDC locations already looked up, per client (the index does not change under a client).
_LOCATED: weakref.WeakKeyDictionary[TCIAClient, dict[str, IDCLocation | None]] = (
    weakref.WeakKeyDictionary()
)
_LOCATED_LOCK = threading.Lock()


def locate_ahead(client: TCIAClient, series_uids: Iterable[str]) -> None:
    """Look up many series in the IDC index in one scan, for :func:`fetch_series` to use."""
    uids = list(series_uids)
    if client.settings.backend == "nbia" or not uids:
        return
    from .idc_fetch import locate

    try:
        found = locate(client, uids)
    except (MissingDependencyError, FileNotFoundError) as exc:
        if client.settings.backend == "idc":
            raise
        log.info("no IDC index (%s): series files from NBIA", exc)
        found = {}
    with _LOCATED_LOCK:
        _LOCATED.setdefault(client, {}).update({uid: found.get(uid) for uid in uids})


def import_readers() -> None:
    """Import pydicom's reader in this thread, before worker threads check files: several
    threads importing it at once can see it half initialised (a circular-import error)."""
    import pydicom.filereader  # noqa: F401


def _location(client: TCIAClient, series_uid: str) -> IDCLocation | None:
    """The series' IDC location, or None where the index does not list it or is missing."""
    with _LOCATED_LOCK:
        known = _LOCATED.get(client, {})
        if series_uid in known:
            return known[series_uid]
    locate_ahead(client, [series_uid])
    with _LOCATED_LOCK:
        return _LOCATED[client][series_uid]


def file_sources(
    client: TCIAClient, series_uid: str, metadata: Mapping[str, Any] | None = None
) -> tuple[list[str], IDCLocation | None]:
    """The sources to try for a series' files, in order (``"idc"``, ``"nbia"``), and its IDC
    location when the index lists it.

    On ``"auto"``: IDC first when the index's ``instanceCount`` equals NBIA's (the
    ``ImageCount`` given, else getSeriesSize's ObjectCount), else NBIA first; a source that
    cannot serve the series (not in the index, unknown to NBIA) is left out.
    """
    backend = client.settings.backend
    from .idc.versions import lacking, pinned

    release = pinned(client)  # an older IDC release: its objects, from IDC only
    if release is not None:
        where = _location(client, series_uid)
        if where is None:
            raise lacking(client, release, [series_uid])
        return ["idc"], where
    if backend == "nbia":
        return ["nbia"], None
    where = _location(client, series_uid)
    if backend == "idc":
        if where is None:
            raise TCIANotFoundError(404, f"the IDC index does not list series {series_uid}",
                                    str(client.idc_index.folder))
        return ["idc"], where
    if where is None:
        return ["nbia"], None
    count = (metadata or {}).get("ImageCount")
    if count is None:
        try:
            count = client.series_size(series_uid)["ObjectCount"]
        except TCIANotFoundError:
            return ["idc"], where
        except TCIAConnectionError as exc:
            log.info("series %s: NBIA not reached (%s); files from IDC", series_uid, exc)
            return ["idc", "nbia"], where
    if where.instance_count is not None and int(count) == where.instance_count:
        return ["idc", "nbia"], where
    return ["nbia", "idc"], where


def fetch_series(
    client: TCIAClient,
    series_uid: str,
    *,
    collection: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    slots: threading.Semaphore | None = None,
) -> CachedSeries:
    """A series from the cache, else from the source(s) :func:`file_sources` names, in turn.

    Parameters and errors as :func:`intake_tcia.retrieval.fetch_series` (``slots``: see
    :func:`intake_tcia.idc_fetch.fetch_series`); when every source
    failed, the last one's error is raised (the first's is logged as a warning).
    """
    from . import idc_fetch, retrieval

    uid = validate_uid(series_uid, "series_uid")
    found = client.cache.get(uid)
    if found is not None:
        return found
    sources, where = file_sources(client, uid, metadata)
    for i, source in enumerate(sources):
        try:
            if source == "idc" and where is not None:
                keep = {k: str(v) for k, v in (metadata or {}).items()
                        if k in retrieval.LAYOUT_FIELDS and v is not None}
                return idc_fetch.fetch_series(client, where, metadata=keep, progress=progress,
                                              slots=slots)
            return retrieval.fetch_series(client, uid, collection=collection,
                                          metadata=metadata, progress=progress)
        except TCIAError as exc:
            if i + 1 == len(sources):
                raise
            log.warning("series %s: %s failed (%s); trying %s", uid, source, exc, sources[i + 1])
    raise AssertionError("unreachable")  # pragma: no cover


def on_files_backend(
    client: TCIAClient, nbia: Callable[[], T], idc: Callable[[], T]
) -> T:
    """``nbia()`` or ``idc()`` as ``settings.backend`` says; on ``"auto"`` NBIA, and IDC when
    NBIA cannot be reached (or does not hold the series)."""
    backend = client.settings.backend
    from .idc.versions import pinned

    if pinned(client) is not None:  # an older IDC release: only IDC has it
        return idc()
    if backend == "nbia":
        return nbia()
    if backend == "idc":
        return idc()
    try:
        return nbia()
    except (TCIAConnectionError, TCIANotFoundError) as exc:
        try:
            return idc()
        except (TCIAError, FileNotFoundError):
            raise exc from None

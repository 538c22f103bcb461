"""Which backend answers: the one routing policy of a client (``settings.backend``).

design.md, "Two backends". ``"nbia"`` and ``"idc"`` use only that source. ``"auto"``:

* queries: NBIA, and the IDC index when NBIA cannot be reached (after its retries; an HTTP error
  status is an answer, not a fall-back), with an :class:`~intake_tcia.errors.IDCFallbackWarning`;
* a series' files: from IDC when the index lists the series with NBIA's instance count, else from
  getImage; when one source fails the other is tried before the series counts as failed;
* one instance, instance lists and headers (``tcia://``, ``discover()``): NBIA, and IDC when NBIA
  cannot be reached or does not hold the series.

Whatever the backend, a series already in the cache is served from there, whichever source put
it there.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ._validate import validate_uid
from .errors import (
    IDCFallbackWarning,
    MissingDependencyError,
    TCIABackendError,
    TCIAConnectionError,
    TCIAError,
    TCIANotFoundError,
)
from .nbia.backend import series_size_of

if TYPE_CHECKING:
    import pandas as pd

    from .backend import Backend, Progress
    from .config import Settings
    from .idc.backend import IDCBackend
    from .nbia.backend import NBIABackend
    from .retrieval.cache import CachedSeries, SeriesCache

__all__ = ["Router"]

log = logging.getLogger("intake_tcia")

T = TypeVar("T")

#: An index that cannot be opened: not installed, or no such folder.
_NO_INDEX = (MissingDependencyError, FileNotFoundError)


class Router:
    """Picks the backend for each call, as ``settings.backend`` says (see the module doc).

    It is also what :func:`intake_tcia.retrieval.download.download` fetches series through.
    """

    def __init__(
        self, settings: Settings, cache: SeriesCache, nbia: NBIABackend, idc: IDCBackend
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.nbia = nbia
        self.idc = idc

    def _policy(self) -> str:
        """``settings.backend``; ``"idc"`` when the client serves an older IDC release
        (``idc_version``): only IDC has that release's copies."""
        from .idc.versions import pinned

        return "idc" if pinned(self.idc) is not None else self.settings.backend

    # -- queries ---------------------------------------------------------------------------------

    def query(self, endpoint: str, params: Mapping[str, str], **where: Any) -> pd.DataFrame:
        """A v4 endpoint's frame from NBIA or the index (``where``: NBIA's host hints)."""
        return self._answer(endpoint, lambda b: b.query(endpoint, params, **where))

    def search(
        self, form: Mapping[str, str], *, collections: Any, page_size: int
    ) -> pd.DataFrame:
        """getSimpleSearch from NBIA or the index."""
        return self._answer(
            "getSimpleSearch",
            lambda b: b.search(form, collections=collections, page_size=page_size),
        )

    def series_metadata(self, series_uids: list[str]) -> pd.DataFrame:
        """getSeriesMetadata rows of these series."""
        return self.query("getSeriesMetadata", {"list": ",".join(series_uids)})

    def series_records(self, series_uids: list[str]) -> list[dict[str, Any]]:
        """getSeriesMetadata rows of these series, one dict a series, with no frame built where
        the source can avoid it (:meth:`Backend.series_records`)."""
        return self._answer("getSeriesMetadata", lambda b: b.series_records(series_uids))

    def series_size(self, series_uid: str, *, collection: str | None = None) -> dict[str, int]:
        """getSeriesSize as ``{"TotalSizeInBytes": int, "ObjectCount": int}``."""
        frame = self.query("getSeriesSize", {"SeriesInstanceUID": series_uid},
                           collection=collection, uid=series_uid)
        return series_size_of(frame, series_uid)

    def _answer(self, endpoint: str, ask: Callable[[Backend], T]) -> T:
        backend = self._policy()
        if backend == "idc":
            return ask(self.idc)
        try:
            return ask(self.nbia)
        except TCIAConnectionError as exc:
            if backend != "auto":
                raise
            try:
                frame = ask(self.idc)
            except (TCIABackendError, MissingDependencyError, TCIANotFoundError):
                raise exc from None
            warnings.warn(
                f"NBIA could not be reached ({exc}); {endpoint} answered from the IDC "
                f"index at {str(self.idc.index.folder)!r}",
                IDCFallbackWarning,
                stacklevel=4,
            )
            return frame

    # -- a series' files -------------------------------------------------------------------------

    def prepare(self, series_uids: Iterable[str]) -> None:
        """Look up many series in the IDC index in one scan, before fetching them one by one."""
        uids = list(series_uids)
        backend = self._policy()
        if backend == "nbia" or not uids:
            return
        try:
            self.idc.locate(uids)
        except _NO_INDEX as exc:
            if backend == "idc":
                raise
            log.info("no IDC index (%s): series files from NBIA", exc)

    def file_sources(
        self, series_uid: str, metadata: Mapping[str, Any] | None = None
    ) -> list[Backend]:
        """The backends to try for a series' files, in order.

        On ``"auto"``: IDC first when the index's ``instanceCount`` equals NBIA's (the
        ``ImageCount`` given, else getSeriesSize's ObjectCount), else NBIA first; a source that
        cannot serve the series (not in the index, unknown to NBIA) is left out.
        """
        backend = self._policy()
        if backend == "nbia":
            return [self.nbia]
        if backend == "idc":
            self.idc.location(series_uid)  # TCIANotFoundError where the index lacks it
            return [self.idc]
        try:
            where = self.idc.find(series_uid)
        except _NO_INDEX as exc:
            log.info("no IDC index (%s): series files from NBIA", exc)
            where = None
        if where is None:
            return [self.nbia]
        count = (metadata or {}).get("ImageCount")
        if count is None:
            try:
                count = self.series_size(series_uid)["ObjectCount"]
            except TCIANotFoundError:
                return [self.idc]
            except TCIAConnectionError as exc:
                log.info("series %s: NBIA not reached (%s); files from IDC", series_uid, exc)
                return [self.idc, self.nbia]
        if where.instance_count is not None and int(count) == where.instance_count:
            return [self.idc, self.nbia]
        return [self.nbia, self.idc]

    def fetch_series(
        self,
        series_uid: str,
        *,
        collection: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
        slots: threading.Semaphore | None = None,
    ) -> CachedSeries:
        """A series from the cache, else from the backends :meth:`file_sources` names, in turn.

        When every source failed, the last one's error is raised (the others' are logged as
        warnings).
        """
        uid = validate_uid(series_uid, "series_uid")
        found = self.cache.get(uid)
        if found is not None:
            return found
        sources = self.file_sources(uid, metadata)
        for i, source in enumerate(sources):
            try:
                return source.fetch_series(uid, collection=collection, metadata=metadata,
                                           progress=progress, slots=slots)
            except TCIAError as exc:
                if i + 1 == len(sources):
                    raise
                log.warning("series %s: %s failed (%s); trying %s", uid, source.name, exc,
                            sources[i + 1].name)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- one instance, instance lists, headers ---------------------------------------------------

    def on_files(self, call: Callable[[Backend], T]) -> T:
        """``call`` on the backend ``settings.backend`` names; on ``"auto"`` NBIA, and IDC when
        NBIA cannot be reached (or does not hold the series)."""
        backend = self._policy()
        if backend == "nbia":
            return call(self.nbia)
        if backend == "idc":
            return call(self.idc)
        try:
            return call(self.nbia)
        except (TCIAConnectionError, TCIANotFoundError) as exc:
            try:
                return call(self.idc)
            except (TCIAError, FileNotFoundError):
                raise exc from None

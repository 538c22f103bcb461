"""The IDC backend: queries answered from the local index, files from the public buckets.

Queries need no request: :mod:`intake_tcia.idc.queries` answers NBIA's endpoints from the index
(:mod:`intake_tcia.idc.index`) in the same typed frames. A series' files are its bucket objects
(:mod:`intake_tcia.idc.bucket`), listed, fetched in parallel, verified and published into the same
cache as NBIA's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import TCIABackendError, in_series
from ..retrieval.cache import CachedSeries, SeriesCache
from ..retrieval.layouts import LAYOUT_FIELDS
from ..retrieval.transport import Transport
from ..schema import SCHEMAS, frame_from_records
from . import versions
from .location import IDCLocation, index_errors, location_of, locations

if TYPE_CHECKING:
    import pandas as pd

    from ..backend import Progress
    from .index import IDCIndex

# The index, its queries and the bucket client are imported where first used: a client that
# never asks IDC (one instance through tcia://, from NBIA) does not pay for them.

__all__ = ["IDCBackend"]


class IDCBackend:
    """The Imaging Data Commons: its index and buckets (a :class:`~intake_tcia.backend.Backend`).

    The index is opened when first needed (it needs the ``idc`` extra); the locations of series
    already looked up are kept on this object, for the life of its client.
    """

    name = "idc"

    def __init__(self, settings: Settings, transport: Transport, cache: SeriesCache) -> None:
        self.settings = settings
        self.transport = transport
        self.cache = cache
        self._located: dict[str, IDCLocation | TCIABackendError | None] = {}
        self._located_lock = threading.Lock()

    @property
    def cache_dir(self) -> Path:
        """Path: the cache directory (the listings of IDC series are kept under it)."""
        return self.settings.cache_dir

    @cached_property
    def index(self) -> IDCIndex:
        """IDCIndex: the index of ``settings.idc_index``, opened once per process."""
        from .index import open_index

        return open_index(self.settings.idc_index, self.settings.cache_dir)

    # -- queries ---------------------------------------------------------------------------------

    def query(self, endpoint: str, params: Mapping[str, str], **where: Any) -> pd.DataFrame:
        """NBIA's answer to ``endpoint``, from the index (``where`` hints are not needed)."""
        from .queries import answer

        with index_errors(self.index):
            if versions.pinned(self) is not None:  # an older IDC release: as it had them
                return versions.answer(self, endpoint, params)
            self.index.refresh()
            return answer(self.index, endpoint, dict(params))

    def series_records(self, series_uids: list[str]) -> list[dict[str, Any]]:
        """getSeriesMetadata rows from the index, typed, one dict a series."""
        frame = self.query("getSeriesMetadata", {"list": ",".join(series_uids)})
        return frame.to_dict("records")

    def search(
        self, form: Mapping[str, str], *, collections: Any = None, page_size: int
    ) -> pd.DataFrame:
        """getSimpleSearch read from the index (no paging: the index is local)."""
        return self.query("getSimpleSearch", form)

    # -- where series are ------------------------------------------------------------------------

    def locate(self, series_uids: Iterable[str]) -> None:
        """Look up many series in the index in one scan, kept for :meth:`location`."""
        from .urls import mirror_bucket

        uids = [u for u in series_uids if u not in self._located]
        if not uids:
            return
        mirror = self.settings.idc_mirror  # as the client's release had them, on its mirror
        try:
            located, irregular = self._from_table(uids)
            # no table: the index scanned for all; rows the table cannot keep: for those
            rest = uids if located is None else irregular
            if rest:
                with index_errors(self.index):
                    rows = versions.series_locations(self, rest)
                located = {**(located or {}), **locations(rows, self.index.path)}
            found: dict[str, Any] = {
                uid: replace(where, bucket=mirror_bucket(where.bucket, mirror))
                for uid, where in (located or {}).items()}
        except TCIABackendError as exc:  # an unreadable file: each series fails with it
            found = dict.fromkeys(uids, exc)
        with self._located_lock:
            self._located.update({uid: found.get(uid) for uid in uids})

    def _from_table(self, uids: list[str]) -> tuple[dict[str, IDCLocation] | None, list[str]]:
        """The locations of the index's own release from the memory-mapped table kept in the
        cache (:mod:`intake_tcia.idc.locations`, built once per index version), each row checked
        as :func:`~intake_tcia.idc.location.locations` checks it; None where there is no table
        (no cache, or an older release asked for); and the series whose rows the table cannot
        keep exactly, left for the index itself."""
        from .locations import table_for, table_index_path

        if versions.pinned(self) is not None:
            return None, []
        try:
            table = table_for(self.settings.idc_index, self.settings.cache_dir)
        except (OSError, ValueError) as exc:  # pyarrow's errors are OSErrors and ValueErrors
            if isinstance(exc, FileNotFoundError):
                raise
            path = table_index_path(self.settings.idc_index)
            raise TCIABackendError(f"the IDC index file {path} cannot be read: "
                                   f"{type(exc).__name__}: {exc}") from exc
        if table is None:
            return None, []
        rows, irregular = table.lookup(uids)
        path = str(table_index_path(self.settings.idc_index))
        return {uid: location_of(row, path) for uid, row in rows.items()}, irregular

    def remember(self, located: Mapping[str, IDCLocation | None]) -> None:
        """Locations looked up elsewhere (another process' one scan for a whole cohort), kept
        for :meth:`location` as if this object had found them (None: not in the index)."""
        with self._located_lock:
            self._located.update(located)

    def find(self, series_uid: str) -> IDCLocation | None:
        """The series' location, or None where the index does not list it
        (:class:`TCIABackendError` where the index file cannot be read)."""
        if series_uid not in self._located:
            self.locate([series_uid])
        found = self._located[series_uid]
        if isinstance(found, TCIABackendError):
            raise in_series(found, series_uid)
        return found

    def location(self, series_uid: str) -> IDCLocation:
        """The series' location; a :class:`TCIANotFoundError` where the index does not list
        it."""
        found = self.find(series_uid)
        if found is None:
            raise versions.not_listed(self, [series_uid])
        return found

    # -- files -----------------------------------------------------------------------------------

    def fetch_series(
        self,
        series_uid: str,
        *,
        collection: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
        slots: threading.Semaphore | None = None,
    ) -> CachedSeries:
        """The series' objects, fetched in parallel and verified into the cache
        (:func:`intake_tcia.idc.bucket.fetch_series`)."""
        from . import bucket

        keep = {k: str(v) for k, v in (metadata or {}).items()
                if k in LAYOUT_FIELDS and v is not None}
        return bucket.fetch_series(self, self.location(series_uid), metadata=keep,
                                   progress=progress, slots=slots)

    def instance_uids(self, series_uid: str, *, collection: str | None = None) -> list[str]:
        """Read from the first bytes of each object, once (kept in the cache directory)."""
        from . import bucket

        return [str(o.sop_instance_uid) for o in bucket.instances(self, series_uid)]

    def instance(
        self, series_uid: str, sop_instance_uid: str, *, collection: str | None = None
    ) -> bytes:
        """One GET of the instance's object, verified."""
        from . import bucket

        return bucket.read_instance(self, series_uid, sop_instance_uid)

    def header(self, series_uid: str, *, collection: str | None = None) -> pd.DataFrame:
        """Read from the first bytes of one object."""
        from . import bucket

        rows = bucket.tag_rows(bucket.read_header(self, series_uid))
        return frame_from_records(rows, SCHEMAS["getDicomTags"])

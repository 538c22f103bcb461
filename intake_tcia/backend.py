"""What a source of TCIA's data must do: the :class:`Backend` protocol.

Two sources implement it, as peers: :class:`~intake_tcia.nbia.backend.NBIABackend` (the NBIA v4
API and its dialects) and :class:`~intake_tcia.idc.backend.IDCBackend` (the Imaging Data Commons
index and buckets). The client never asks a backend by name: :class:`~intake_tcia.routing.Router`
picks one per call, as ``settings.backend`` says. A new source (a mirror, another archive) is one
more class with these methods, in its own package beside ``nbia/`` and ``idc/``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pandas as pd

    from .retrieval.cache import CachedSeries

__all__ = ["Backend", "Progress"]

#: Called with byte counts as they arrive (negative to take back a failed attempt's bytes).
Progress = Callable[[int], None]


class Backend(Protocol):
    """One source of the archive: queries, a series' files, one instance, headers."""

    #: ``"nbia"`` or ``"idc"``: the name ``settings.backend`` uses.
    name: str

    def query(
        self,
        endpoint: str,
        params: Mapping[str, str],
        *,
        collection: str | None = None,
        uid: str | None = None,
        every_host: bool = False,
    ) -> pd.DataFrame:
        """The typed frame (:mod:`intake_tcia.schema`) of a v4 ``endpoint`` for ``params``.

        ``collection``, ``uid`` and ``every_host`` say where the data may be (a source with
        several hosts uses them; others ignore them).
        """
        ...

    def series_records(self, series_uids: list[str]) -> list[dict[str, Any]]:
        """getSeriesMetadata rows, one dict a series, as cheaply as the source can give them
        (values may be the server's text: dates, numbers and flags typed or not)."""
        ...

    def search(
        self, form: Mapping[str, str], *, collections: Any = None, page_size: int
    ) -> pd.DataFrame:
        """The series a getSimpleSearch ``form`` (:func:`intake_tcia.criteria.search_form`)
        selects, in getSeries columns."""
        ...

    def fetch_series(
        self,
        series_uid: str,
        *,
        collection: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
        slots: threading.Semaphore | None = None,
    ) -> CachedSeries:
        """The series' instances streamed through the retrieval pipeline: checked, verified
        and published into the cache (or found there)."""
        ...

    def instance_uids(self, series_uid: str, *, collection: str | None = None) -> list[str]:
        """The SOPInstanceUIDs of a series' instances."""
        ...

    def instance(
        self, series_uid: str, sop_instance_uid: str, *, collection: str | None = None
    ) -> bytes:
        """The bytes of one instance, verified, with no use of the series cache."""
        ...

    def header(self, series_uid: str, *, collection: str | None = None) -> pd.DataFrame:
        """The DICOM header of one instance of a series, as getDicomTags rows."""
        ...

"""The NBIA backend: the v4 endpoints on TCIA's hosts, in whatever dialect each host speaks.

Hosts: a query naming collection NLST goes to the NLST host. A query that names only a patient,
study or series goes to the host already known to hold it, else to the main host and, when that
one has nothing, to the NLST host; the answer is remembered. Queries with neither a collection
nor a UID ask every host and join the answers.

Dialects: each host may speak another dialect of the API (older NBIA v1/v2, the legacy TCIA REST
API, an NBIA that wants a login; see :mod:`intake_tcia.nbia.flavours`). Requests are asked in v4
terms; the transport puts each into its host's dialect (:meth:`Flavour.request`) and carries its
credentials (:mod:`intake_tcia.nbia.auth`), and answers are read with the flavour's schemas, so
every dialect gives the same v4-named, typed DataFrames.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import requests

from .._lazy import pandas as pd
from ..config import Settings
from ..errors import TCIANotFoundError, TCIAResponseError
from ..retrieval.cache import CachedSeries, SeriesCache
from ..retrieval.transport import Transport
from ..schema import SCHEMAS, frame_from_csv, records_from_csv
from .auth import auth_for
from .flavours import Flavour, flavour_for

if TYPE_CHECKING:
    from ..backend import Progress

__all__ = ["NBIABackend"]

T = TypeVar("T")

#: getSeriesMetadata takes at most this many UIDs a request (as the NBIA clients chunk).
METADATA_CHUNK = 10_000
#: What getSeriesMetadata's CSV may hold: a header and this many bytes a series asked (rows are
#: about 600 bytes), so an endless answer stops near what was asked, not at max_answer_bytes.
_CSV_ROW_BYTES, _CSV_SLACK = 16 << 10, 1 << 20


class NBIABackend:
    """The NBIA v4 API on the main and NLST hosts (a :class:`~intake_tcia.backend.Backend`).

    It builds the client's one :class:`~intake_tcia.retrieval.transport.Transport` (the
    dialects and credentials are NBIA's), which the other backends share.
    """

    name = "nbia"

    def __init__(self, settings: Settings, session: requests.Session, cache: SeriesCache) -> None:
        self.settings = settings
        self.cache = cache
        self.flavours: dict[str, Flavour] = {
            host: flavour_for(host, settings.api_version) for host in settings.hosts
        }
        auth = auth_for({h: f.auth for h, f in self.flavours.items()}, session, settings)
        self.transport = Transport(settings, session, route=self._route, auth=auth)
        self._hosts: dict[str, str] = {}  # UID -> base URL that holds it
        self._hosts_lock = threading.Lock()

    # -- hosts -----------------------------------------------------------------------------------

    def _hosts_for(self, collection: str | None, uid: str | None = None) -> list[str]:
        if collection is not None:
            return [self.settings.host_for(collection)]
        known = self._hosts.get(uid) if uid else None
        if known:
            return [known]
        return list(self.settings.hosts) if uid else [self.settings.api_url]

    def remember_host(self, uid: str, host: str) -> None:
        """Note that ``host`` (a base URL) holds ``uid``, so later calls go straight there."""
        with self._hosts_lock:
            self._hosts[uid] = host

    def remember_collection(self, uid: str, collection: str) -> None:
        """Note that ``uid`` belongs to ``collection``, so calls go to that collection's host."""
        self.remember_host(uid, self.settings.host_for(collection))

    def on_series_host(
        self, series_uid: str, call: Callable[[str], T], *, collection: str | None = None
    ) -> T:
        """``call(base_url)`` on the host that holds a series, found as the module doc says.

        A host that answers :class:`TCIANotFoundError` is passed over for the next; the host
        that answers is remembered.
        """
        hosts = self._hosts_for(collection, series_uid)
        for i, host in enumerate(hosts):
            try:
                result = call(host)
            except TCIANotFoundError:
                if i + 1 == len(hosts):
                    raise
                continue
            self.remember_host(series_uid, host)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _route(self, url: str, params: Any) -> tuple[str, Any]:
        """A v4-style request in the dialect of the host it goes to (the transport's route)."""
        for host, flavour in self.flavours.items():
            if url.startswith(host):
                return flavour.request(url, params)
        return url, params

    def _get(self, host: str, endpoint: str, params: Mapping[str, str]) -> pd.DataFrame:
        schema = self.flavours[host].schemas[endpoint]
        return self.transport.get_json(host + endpoint, params=dict(params),
                                       parser=lambda: _json_frame(schema))

    # -- queries ---------------------------------------------------------------------------------

    def query(
        self,
        endpoint: str,
        params: Mapping[str, str],
        *,
        collection: str | None = None,
        uid: str | None = None,
        every_host: bool = False,
    ) -> pd.DataFrame:
        """The answer of the host(s) that may hold the data (see the module doc).

        ``every_host`` (or neither a collection nor a UID): every host's answer, joined; with
        a collection, that collection's host; with a UID, each candidate host in turn until
        one has rows.
        """
        if endpoint in ("getSeriesMetadata", "getSeriesMetaData"):
            return self._metadata_of([u for u in params["list"].split(",") if u])
        if endpoint == "getCollectionOrSeriesForDOI":
            return self._for_doi(params)
        if every_host or (collection is None and uid is None):
            hosts = [self.settings.host_for(collection)] if collection else self.settings.hosts
            frames = [self._get(host, endpoint, params) for host in hosts]
            return pd.concat(frames, ignore_index=True).drop_duplicates(ignore_index=True)
        for host in self._hosts_for(collection, uid):
            frame = self._get(host, endpoint, params)
            if len(frame):
                if uid is not None:
                    self.remember_host(uid, host)
                break
        return frame

    def search(
        self, form: Mapping[str, str], *, collections: Any = None, page_size: int
    ) -> pd.DataFrame:
        """getSimpleSearch, paged, on each host that may hold the collections asked."""
        from .search import nbia_search

        return nbia_search(self, form, collections, page_size)

    def _for_doi(self, form: Mapping[str, str]) -> pd.DataFrame:
        schema = SCHEMAS["getCollectionOrSeriesForDOI"]
        frames = [
            self.transport.get_json(host + "getCollectionOrSeriesForDOI", data=dict(form),
                                    parser=lambda: _json_frame(schema))
            for host in self.settings.hosts
        ]
        return pd.concat(frames, ignore_index=True).drop_duplicates(ignore_index=True)

    def _metadata_of(self, uids: list[str]) -> pd.DataFrame:
        """getSeriesMetadata: UIDs sent 10,000 at a time, each batch to the host that holds it
        (one at a time to v1/v2 and legacy hosts, whose getSeriesMetaData takes one UID)."""

        def frames(host: str, asked: list[str]) -> list[pd.DataFrame]:
            if self.flavours[host].metadata_per_series:
                return [self._metadata_of_one(host, uid) for uid in asked]
            return self.metadata_batches(host, asked)

        found = self._on_holding_hosts(
            uids, frames, lambda frame: frame["SeriesInstanceUID"].dropna().tolist())
        return pd.concat([frame_from_csv("", SCHEMAS["getSeriesMetadata"]), *found],
                         ignore_index=True)

    def series_records(self, series_uids: list[str]) -> list[dict[str, Any]]:
        """getSeriesMetadata rows as the server's text, one dict a series, with no frame built
        (what a download needs: folder names, sizes, counts). Hosts are asked as
        :meth:`query` asks them; v1/v2 hosts' rows come from their typed frames."""

        def records(host: str, asked: list[str]) -> list[dict[str, Any]]:
            if self.flavours[host].metadata_per_series:
                return [row for uid in asked
                        for row in self._metadata_of_one(host, uid).to_dict("records")]
            schema = SCHEMAS["getSeriesMetadata"]
            return [row for text in self._metadata_texts(host, asked)
                    for row in records_from_csv(text, schema)]

        return self._on_holding_hosts(
            list(series_uids), records, lambda row: [row.get("SeriesInstanceUID")])

    def _on_holding_hosts(
        self,
        uids: list[str],
        ask: Callable[[str, list[str]], list[T]],
        uids_of: Callable[[T], list[Any]],
    ) -> list[T]:
        """``ask(host, uids)`` of each host in turn, for the series the hosts before it did not
        answer (``uids_of`` an answer's part gives the series it holds); every part, in order."""
        parts: list[T] = []
        for host in self.settings.hosts:
            if not uids:
                break
            found = ask(host, uids)
            parts += found
            answered = {uid for part in found for uid in uids_of(part)}
            uids = [u for u in uids if u not in answered]
        return parts

    def metadata_batches(self, host: str, uids: list[str]) -> list[pd.DataFrame]:
        """getSeriesMetadata (v4): POST the UIDs in batches, quoted CSV back."""
        schema = SCHEMAS["getSeriesMetadata"]
        return [frame_from_csv(text, schema) for text in self._metadata_texts(host, uids)]

    def _metadata_texts(self, host: str, uids: list[str]) -> Iterator[str]:
        """The CSV texts of getSeriesMetadata (v4), asked 10,000 UIDs at a time."""
        for start in range(0, len(uids), METADATA_CHUNK):
            batch = ",".join(uids[start : start + METADATA_CHUNK])
            body, content_type = self.transport.fetch(
                "POST", host + "getSeriesMetadata", data={"list": batch},
                limit=_CSV_SLACK + _CSV_ROW_BYTES * len(uids[start : start + METADATA_CHUNK]),
            )
            text = body.decode("utf-8", "replace")
            if text.strip() and "SeriesInstanceUID" not in text.partition("\n")[0]:
                raise TCIAResponseError(
                    f"expected CSV from {host}getSeriesMetadata, got "
                    f"{content_type or 'no content type'}: {text[:200]!r}"
                )
            yield text

    def _metadata_of_one(self, host: str, uid: str) -> pd.DataFrame:
        """v1/v2 getSeriesMetaData: one series, JSON with v1 names (no rows if not here)."""
        try:
            frame = self._get(host, "getSeriesMetaData", {"SeriesInstanceUID": uid})
        except TCIANotFoundError:
            return frame_from_csv("", SCHEMAS["getSeriesMetadata"])
        return frame[frame["SeriesInstanceUID"] == uid]

    def series_size(self, series_uid: str, *, collection: str | None = None) -> dict[str, int]:
        """getSeriesSize as ``{"TotalSizeInBytes": int, "ObjectCount": int}``."""
        frame = self.query("getSeriesSize", {"SeriesInstanceUID": series_uid},
                           collection=collection, uid=series_uid)
        return series_size_of(frame, series_uid)

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
        """The series' getImage zip, unpacked into the cache while it arrives
        (:func:`intake_tcia.nbia.getimage.fetch_series`)."""
        from . import getimage  # with the zip reader: what one instance does not need

        return getimage.fetch_series(self, series_uid, collection=collection,
                                     metadata=metadata, progress=progress)

    def instance_uids(self, series_uid: str, *, collection: str | None = None) -> list[str]:
        """getSOPInstanceUIDs."""
        frame = self.query("getSOPInstanceUIDs", {"SeriesInstanceUID": series_uid},
                           collection=collection, uid=series_uid)
        return frame["SOPInstanceUID"].dropna().tolist()

    def instance(
        self, series_uid: str, sop_instance_uid: str, *, collection: str | None = None
    ) -> bytes:
        """getSingleImage, on the host that holds the series."""
        params = {"SeriesInstanceUID": series_uid, "SOPInstanceUID": sop_instance_uid}

        def fetch(host: str) -> bytes:
            return bytes(self.transport.fetch("GET", host + "getSingleImage", params=params)[0])

        return self.on_series_host(series_uid, fetch, collection=collection)

    def header(self, series_uid: str, *, collection: str | None = None) -> pd.DataFrame:
        """getDicomTags."""
        return self.query("getDicomTags", {"SeriesUID": series_uid}, collection=collection,
                          uid=series_uid)


    # -- DOIs ------------------------------------------------------------------------------------

    def datacite(self, doi: str) -> dict[str, Any] | None:
        """The DataCite attributes of a DOI (TCIA's DOIs are registered there), or None."""
        try:
            rows = self.transport.get_json(self.settings.datacite_url + "dois/" + doi)
        except TCIANotFoundError:
            return None
        attributes = rows[0].get("data", {}).get("attributes") if rows else None
        return attributes if isinstance(attributes, dict) else None


def series_size_of(frame: pd.DataFrame, series_uid: str) -> dict[str, int]:
    """A getSeriesSize frame as a dict; :class:`TCIANotFoundError` when it has no series."""
    if frame.empty or pd.isna(frame.loc[0, "ObjectCount"]):
        raise TCIANotFoundError(404, f"no series {series_uid}", "getSeriesSize")
    return {k: int(frame.loc[0, k]) for k in ("TotalSizeInBytes", "ObjectCount")}


def _json_frame(schema: Any) -> Any:
    """A :class:`~intake_tcia._jsonframe.JSONFrame` (pyarrow and msgspec, imported when a query
    is first parsed)."""
    from .._jsonframe import JSONFrame

    return JSONFrame(schema)

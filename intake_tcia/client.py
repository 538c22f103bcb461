"""TCIAClient: the NBIA v4 endpoints as methods that return typed pandas DataFrames.

Each public query builds its parameters (validated before any request), picks the host that holds
the data (NLST has its own), asks through the one :class:`~intake_tcia._http.Transport`, and shapes
the rows with the endpoint's fixed schema (:mod:`intake_tcia.schema`).

Host routing: a query naming collection NLST goes to the NLST host. A query that names only a
patient, study or series goes to the host already known to hold it, else to the main host and, when
that one has nothing, to the NLST host; the answer is remembered. Queries with neither a collection
nor a UID ask every host and join the answers.

Names: an empty answer to a filter that names a collection, patient, modality or body part the
archive does not have raises :class:`~intake_tcia.errors.TCIAUnknownNameError`, naming the closest
real names; the listings that check needs are asked for only then.

Flavours: each host may speak another dialect of the API (older NBIA v1/v2, the legacy TCIA REST
API, an NBIA that wants a login; see :mod:`intake_tcia.flavours`). The client still asks in v4
terms; its transport puts every request into the host's dialect (:meth:`Flavour.request`) and
carries its credentials (:mod:`intake_tcia._auth`), and :meth:`TCIAClient._get` reads answers
with the flavour's schemas, so every flavour gives the same v4-named, typed DataFrames.

Backends: every query goes through :func:`intake_tcia.idc_queries.routed`, which asks NBIA
(``backend="nbia"``), the IDC index instead (``"idc"``: the same frames, no request), or NBIA and
the index when NBIA cannot be reached (``"auto"``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
import requests

from ._auth import auth_for
from ._http import Transport
from ._jsonframe import JSONFrame
from ._validate import format_query_date, validate_date, validate_text, validate_uid
from .backends import on_files_backend
from .cache import CachedSeries, SeriesCache
from .config import Settings
from .download import DEFAULT_LAYOUT
from .errors import TCIANotFoundError, TCIAResponseError, TCIAUnknownNameError
from .flavours import Flavour, flavour_for
from .hints import with_keyword_hints
from .idc_index import IDCIndex, open_index
from .idc_queries import routed
from .manifest import as_series_uids
from .schema import SCHEMAS, frame_from_csv, frame_from_records

if TYPE_CHECKING:
    import pydicom

__all__ = ["TCIAClient"]

T = TypeVar("T")

#: getSeriesMetadata takes at most this many UIDs a request (as the NBIA clients chunk).
METADATA_CHUNK = 10_000


# Python keyword -> (NBIA parameter, validator)
_PARAMETERS: dict[str, tuple[str, Callable[[Any, str], str]]] = {
    "collection": ("Collection", validate_text),
    "patient_id": ("PatientID", validate_text),
    "study_uid": ("StudyInstanceUID", validate_uid),
    "series_uid": ("SeriesInstanceUID", validate_uid),
    "modality": ("Modality", validate_text),
    "body_part": ("BodyPartExamined", validate_text),
    "manufacturer": ("Manufacturer", validate_text),
    "manufacturer_model": ("ManufacturerModelName", validate_text),
}


# Name filters checked when an answer is empty: NBIA parameter -> (keyword, listing, column).
_NAME_LISTINGS: dict[str, tuple[str, str, str]] = {
    "Collection": ("collection", "getCollectionValues", "Collection"),
    "PatientID": ("patient_id", "getPatient", "PatientID"),
    "Modality": ("modality", "getModalityValues", "Modality"),
    "BodyPartExamined": ("body_part", "getBodyPartValues", "BodyPartExamined"),
}


def _params(**given: Any) -> dict[str, str]:
    """NBIA parameters from Python keywords, validated; ``None`` values are left out."""
    params = {}
    for keyword, value in given.items():
        if value is None:
            continue
        name, validate = _PARAMETERS[keyword]
        params[name] = validate(value, keyword)
    return params


class TCIAClient:
    """A client of the TCIA (NBIA v4) REST API.

    Parameters
    ----------
    api_url, nlst_api_url : str, optional
        Base URLs of the main and NLST hosts (default: ``INTAKE_TCIA_API_URL`` /
        ``INTAKE_TCIA_NLST_API_URL``, else TCIA's).
    cache_dir : str or Path, optional
        The series cache (default ``INTAKE_TCIA_CACHE_DIR``, else the user cache dir).
    timeout : float or (float, float), optional
        Connect and read timeouts in seconds (one number sets both).
    retries : int, optional
        Retries on 429, 5xx, and lost connections, with exponential backoff.
    workers : int, optional
        Series downloaded at once.
    session : requests.Session, optional
        A session to send requests with (proxies, certificates).
    settings : Settings, optional
        Complete settings; keywords given too override them.
    **options
        Any other :class:`~intake_tcia.config.Settings` field (``backoff_factor``, ...), among
        them ``api_version``, ``api_key``, ``username`` and ``password`` for older and other
        NBIA servers (:mod:`intake_tcia.flavours`).

    Examples
    --------
    >>> c = TCIAClient()                                   # doctest: +SKIP
    >>> c.series(collection="LIDC-IDRI", modality="CT")   # doctest: +SKIP

    An NBIA v1 server, and the legacy TCIA REST API (same DataFrames as from v4):

    >>> TCIAClient(api_url="https://services.cancerimagingarchive.net/nbia-api/services/v1/")
    ... # doctest: +SKIP
    >>> TCIAClient(api_url="https://services.cancerimagingarchive.net/services/v4/TCIA/query/",
    ...            api_key="...")                          # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        api_url: str | None = None,
        nlst_api_url: str | None = None,
        cache_dir: str | Path | None = None,
        timeout: float | tuple[float, float] | None = None,
        retries: int | None = None,
        workers: int | None = None,
        session: requests.Session | None = None,
        settings: Settings | None = None,
        **options: Any,
    ) -> None:
        given = dict(options, api_url=api_url, nlst_api_url=nlst_api_url, cache_dir=cache_dir)
        given.update(retries=retries, workers=workers)
        if timeout is not None:
            connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
            given.update(connect_timeout=connect, read_timeout=read)
        if settings is None:
            self.settings = Settings.from_env(**given)
        else:
            Settings.from_env(**given)  # rejects unknown keywords
            self.settings = settings.replace(**{k: v for k, v in given.items() if v is not None})
        self._flavours: dict[str, Flavour] = {
            host: flavour_for(host, self.settings.api_version) for host in self.settings.hosts
        }
        session = session or requests.Session()
        auth = auth_for({h: f.auth for h, f in self._flavours.items()}, session, self.settings)
        self._transport = Transport(self.settings, session, route=self._route, auth=auth)
        self._hosts: dict[str, str] = {}  # UID -> base URL that holds it
        self._hosts_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TCIAClient(api_url={self.settings.api_url!r}, cache_dir={str(self.cache_dir)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return _client_from_settings, (self.settings,)  # secrets are left out (see Settings)

    def __enter__(self) -> TCIAClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections."""
        self._transport.close()

    @property
    def cache_dir(self) -> Path:
        """Path: the series cache directory."""
        return self.settings.cache_dir

    # -- routing ---------------------------------------------------------------------------------

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

    # -- transport helpers ------------------------------------------------------------------------

    def _route(self, url: str, params: Any) -> tuple[str, Any]:
        """A v4-style request in the dialect of the host it goes to (the transport's route)."""
        for host, flavour in self._flavours.items():
            if url.startswith(host):
                return flavour.request(url, params)
        return url, params

    def _get(self, host: str, endpoint: str, params: dict[str, str]) -> pd.DataFrame:
        schema = self._flavours[host].schemas[endpoint]
        return self._transport.get_json(host + endpoint, params=params,
                                        parser=lambda: JSONFrame(schema))

    def _query(
        self,
        endpoint: str,
        params: dict[str, str],
        *,
        collection: str | None = None,
        uid: str | None = None,
    ) -> pd.DataFrame:
        """Ask each candidate host in turn until one has rows (see the module doc); with neither
        a collection nor a UID, every host. No rows: a name filter the archive lacks is an error."""
        def ask() -> pd.DataFrame:
            if collection is None and uid is None:
                return self._both_hosts(endpoint, params, direct=True)
            for host in self._hosts_for(collection, uid):
                frame = self._get(host, endpoint, params)
                if len(frame):
                    if uid is not None:
                        self.remember_host(uid, host)
                    break
            return frame

        frame = routed(self, endpoint, params, ask)
        if frame.empty:
            self._check_names(params, endpoint)
        return frame

    def _check_names(self, params: dict[str, str], endpoint: str) -> None:
        """Raise :class:`TCIAUnknownNameError` for the first name filter the archive lacks.

        Called only for an empty answer: the listings it asks for cost nothing otherwise.
        """
        collection = params.get("Collection")
        for name, (keyword, listing, column) in _NAME_LISTINGS.items():
            value = params.get(name)
            if value is None:
                continue
            if name == "PatientID":  # only this collection's patients, or this ID anywhere
                scope = {"Collection": collection} if collection else {"PatientID": value}
                hosts = [self.settings.host_for(collection)] if collection else None
                known = self._both_hosts(listing, scope, hosts=hosts)[column]
            else:
                known = self._both_hosts(listing, {})[column]
            known = known.dropna().astype(str)
            if value.lower() not in set(known.str.lower()):
                where = f"collection {collection!r}" if name == "PatientID" and collection else (
                    "the archive")
                url = self.settings.api_url + endpoint
                raise TCIAUnknownNameError(keyword, value, known, url, where)

    def _both_hosts(
        self, endpoint: str, params: dict[str, str], *, hosts: list[str] | None = None,
        direct: bool = False,
    ) -> pd.DataFrame:
        """Every host's answer, joined; ``direct``: NBIA's, whatever the backend."""

        def ask() -> pd.DataFrame:
            frames = [self._get(host, endpoint, params) for host in hosts or self.settings.hosts]
            return pd.concat(frames, ignore_index=True).drop_duplicates(ignore_index=True)

        return ask() if direct else routed(self, endpoint, params, ask)

    @property
    def idc_index(self) -> IDCIndex:
        """IDCIndex: the IDC index of ``settings.idc_index``, opened once per process."""
        return open_index(self.settings.idc_index, self.settings.cache_dir)

    # -- the query endpoints ---------------------------------------------------------------------

    def collections(self) -> pd.DataFrame:
        """Every collection, NLST (from its own host) included.

        Returns
        -------
        pandas.DataFrame
            One column, ``Collection``.
        """
        return self._both_hosts("getCollectionValues", {})

    def modalities(
        self, collection: str | None = None, body_part: str | None = None
    ) -> pd.DataFrame:
        """Modalities present, optionally within a collection and body part (``Modality``)."""
        params = _params(collection=collection, body_part=body_part)
        return self._query("getModalityValues", params, collection=collection)

    def body_parts(
        self, collection: str | None = None, modality: str | None = None
    ) -> pd.DataFrame:
        """Body parts examined (``BodyPartExamined``; a null body part is a missing value)."""
        params = _params(collection=collection, modality=modality)
        return self._query("getBodyPartValues", params, collection=collection)

    def manufacturers(
        self,
        collection: str | None = None,
        modality: str | None = None,
        body_part: str | None = None,
    ) -> pd.DataFrame:
        """Equipment manufacturers (``Manufacturer``)."""
        params = _params(collection=collection, modality=modality, body_part=body_part)
        return self._query("getManufacturerValues", params, collection=collection)

    def patients(self, collection: str | None = None) -> pd.DataFrame:
        """Patients: PatientID (the server's ``PatientId``), PatientName, PatientSex, ..."""
        return self._query("getPatient", _params(collection=collection), collection=collection)

    def patients_by_modality(self, collection: str, modality: str) -> pd.DataFrame:
        """Patients of ``collection`` with a series of ``modality`` (PatientID, Authorized)."""
        params = _params(collection=collection, modality=modality)
        return self._query("getPatientByCollectionAndModality", params, collection=collection)

    def new_patients(self, collection: str, since: date | str) -> pd.DataFrame:
        """Patients of ``collection`` added on or after ``since``."""
        params = _params(collection=collection)
        params["fromDate"] = format_query_date(validate_date(since, "since"))
        return self._query("NewPatientsInCollection", params, collection=collection)

    def studies(
        self,
        collection: str | None = None,
        patient_id: str | None = None,
        study_uid: str | None = None,
    ) -> pd.DataFrame:
        """Studies, with StudyDate as datetime64 and SeriesCount as an integer."""
        params = _params(collection=collection, patient_id=patient_id, study_uid=study_uid)
        uid = params.get("StudyInstanceUID") or params.get("PatientID")
        return self._query("getPatientStudy", params, collection=collection, uid=uid)

    def new_studies(
        self, collection: str, since: date | str, patient_id: str | None = None
    ) -> pd.DataFrame:
        """Studies of ``collection`` (and patient) added on or after ``since``."""
        params = _params(collection=collection, patient_id=patient_id)
        params["fromDate"] = format_query_date(validate_date(since, "since"))
        return self._query("NewStudiesInPatientCollection", params, collection=collection)

    def series(
        self,
        collection: str | None = None,
        patient_id: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
        modality: str | None = None,
        body_part: str | None = None,
        manufacturer: str | None = None,
        manufacturer_model: str | None = None,
    ) -> pd.DataFrame:
        """Series matching every filter given, in v4 getSeries columns.

        Filters on names are case-insensitive; UIDs match exactly. Dates are datetime64,
        ImageCount and FileSize (bytes) nullable integers.
        """
        params = _params(
            collection=collection,
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            modality=modality,
            body_part=body_part,
            manufacturer=manufacturer,
            manufacturer_model=manufacturer_model,
        )
        uid = (
            params.get("SeriesInstanceUID")
            or params.get("StudyInstanceUID")
            or params.get("PatientID")
        )
        return self._query("getSeries", params, collection=collection, uid=uid)

    def updated_series(self, since: date | str) -> pd.DataFrame:
        """Series released after ``since`` (strictly), on every host."""
        params = {"fromDate": format_query_date(validate_date(since, "since"))}
        return self._both_hosts("getUpdatedSeries", params)

    def series_metadata(self, series_uids: str | Iterable[str]) -> pd.DataFrame:
        """Detailed metadata of series (getSeriesMetadata), pixel spacing and slice thickness too.

        UIDs are sent 10,000 at a time, each batch to the host that holds it (one at a time to
        v1/v2 and legacy hosts, whose getSeriesMetaData takes one SeriesInstanceUID).
        """
        uids = as_series_uids(series_uids)
        return routed(self, "getSeriesMetadata", {"list": ",".join(uids)},
                      lambda: self._metadata_of(uids))

    def _metadata_of(self, uids: list[str]) -> pd.DataFrame:
        frames = [frame_from_csv("", SCHEMAS["getSeriesMetadata"])]
        for host in self.settings.hosts:
            if self._flavours[host].metadata_per_series:
                frames += [self._metadata_of_one(host, uid) for uid in uids]
            else:
                frames += self._metadata_batches(host, uids)
            found = set(pd.concat(frames)["SeriesInstanceUID"].dropna())
            uids = [u for u in uids if u not in found]
            if not uids:
                break
        return pd.concat(frames, ignore_index=True)

    def _metadata_batches(self, host: str, uids: list[str]) -> list[pd.DataFrame]:
        """getSeriesMetadata (v4): POST the UIDs in batches, quoted CSV back."""
        frames = []
        for start in range(0, len(uids), METADATA_CHUNK):
            batch = ",".join(uids[start : start + METADATA_CHUNK])
            body, content_type = self._transport.fetch(
                "POST", host + "getSeriesMetadata", data={"list": batch}
            )
            text = body.decode("utf-8", "replace")
            if text.strip() and "SeriesInstanceUID" not in text.partition("\n")[0]:
                raise TCIAResponseError(
                    f"expected CSV from {host}getSeriesMetadata, got "
                    f"{content_type or 'no content type'}: {text[:200]!r}"
                )
            frames.append(frame_from_csv(text, SCHEMAS["getSeriesMetadata"]))
        return frames

    def _metadata_of_one(self, host: str, uid: str) -> pd.DataFrame:
        """v1/v2 getSeriesMetaData: one series, JSON with v1 names (no rows if not here)."""
        try:
            frame = self._get(host, "getSeriesMetaData", {"SeriesInstanceUID": uid})
        except TCIANotFoundError:
            return frame_from_csv("", SCHEMAS["getSeriesMetadata"])
        return frame[frame["SeriesInstanceUID"] == uid]

    def shared_cart(self, name: str) -> pd.DataFrame:
        """The series of a shared cart (v1 getContentsByName), in v4 getSeries columns.

        Parameters
        ----------
        name : str
            The cart's name, as in the link the NBIA portal gives when a cart is shared
            (``...?saved-cart=nbia-49121659384603347`` -> ``"nbia-49121659384603347"``).

        Returns
        -------
        pandas.DataFrame
            One row per series, columns and dtypes as :meth:`series`; empty for an unknown cart.
        """
        params = {"name": validate_text(name, "name")}
        return self._both_hosts("getContentsByName", params)

    def search(self, *, page_size: int = 1000, **criteria: Any) -> pd.DataFrame:
        """Series found by NBIA's advanced search (getSimpleSearch), in v4 getSeries columns.

        Parameters
        ----------
        collection, patient_id, study_uid, series_uid, modality, body_part, manufacturer, species
            : str or list of str, optional
            One value or several (any of them matches); criteria of different names must all
            match. Names match case-insensitively; ``body_part="NOT SPECIFIED"`` matches a
            missing body part; ``species`` is ``"human"``, ``"mouse"``, ``"dog"`` or an NCI code.
        released_from, released_to : datetime.date or str, optional
            DateReleased between these dates, both included (``YYYY-MM-DD`` or ``MM-DD-YYYY``).
        min_studies : int, optional
            Only patients with at least this many studies matching the other criteria.
        all_modalities : bool
            Only patients with a series of *every* modality given; then all their series.
        page_size : int
            Patients asked per manifest page (paging is transparent).

        Returns
        -------
        pandas.DataFrame
            One row per series, columns and dtypes as :meth:`series`, sorted by Collection,
            PatientID, StudyInstanceUID and SeriesInstanceUID.

        Raises
        ------
        TypeError, ValueError
            Before any request, for an unknown keyword or a malformed value (named).
        TCIAUnknownNameError
            Nothing found, and a collection, patient, modality or body part named is not in
            the archive (the closest names suggested).
        """
        import inspect

        from .hints import check_keywords, check_search_names
        from .search import search, search_form

        check_keywords(criteria, inspect.signature(search_form).parameters, "TCIAClient.search()")
        frame = search(self, page_size=page_size, **criteria)
        if frame.empty:
            check_search_names(self, criteria)
        return frame

    def collection_descriptions(self, collection: str | None = None) -> pd.DataFrame:
        """collectionName, description (HTML, as kept by NBIA), descriptionURI, id, and
        descriptionText (the description as plain text), of one collection or of all."""
        from .search import description_text

        params = {} if collection is None else {"collectionName": validate_text(
            collection, "collection")}
        hosts = None if collection is None else [self.settings.host_for(collection)]
        frame = self._both_hosts("getCollectionDescriptions", params, hosts=hosts)
        frame["descriptionText"] = frame["description"].map(description_text).astype(
            frame["description"].dtype)
        return frame

    def series_for_doi(self, doi: str, *, level: str = "series") -> pd.DataFrame:
        """What a DOI (``10.7937/...``, ``https://doi.org/...`` or ``doi:...``) names in NBIA.

        ``level="series"``: one row per series (SeriesInstanceUID, Collection,
        ThirdPartyAnalysis, Authorized); ``level="collection"``: one row per collection, the
        same columns with SeriesInstanceUID null. Empty when no series carries the DOI.
        """
        from .search import doi_url

        if level not in ("series", "collection"):
            raise ValueError(f"level must be 'series' or 'collection', not {level!r}")
        form = {"DOI": doi_url(doi), "CollectionOrSeries": level}
        schema = SCHEMAS["getCollectionOrSeriesForDOI"]

        def ask() -> pd.DataFrame:
            frames = [
                self._transport.get_json(
                    host + "getCollectionOrSeriesForDOI", data=form,
                    parser=lambda: JSONFrame(schema),
                )
                for host in self.settings.hosts
            ]
            return pd.concat(frames, ignore_index=True).drop_duplicates(ignore_index=True)

        return routed(self, "getCollectionOrSeriesForDOI", form, ask)

    def series_size(self, series_uid: str, *, collection: str | None = None) -> dict[str, int]:
        """``{"TotalSizeInBytes": int, "ObjectCount": int}`` of one series (uncompressed bytes).

        ``collection``, when known, routes the request straight to the right host.
        """
        uid = validate_uid(series_uid, "series_uid")
        frame = self._query(
            "getSeriesSize", {"SeriesInstanceUID": uid}, collection=collection, uid=uid
        )
        if frame.empty or pd.isna(frame.loc[0, "ObjectCount"]):
            raise TCIANotFoundError(404, f"no series {uid}", "getSeriesSize")
        return {k: int(frame.loc[0, k]) for k in ("TotalSizeInBytes", "ObjectCount")}

    def sop_instance_uids(self, series_uid: str, *, collection: str | None = None) -> list[str]:
        """The SOPInstanceUIDs of one series' instances (``collection`` routes, as above); on
        IDC, read from the first bytes of each object, once (kept in the cache directory)."""
        uid = validate_uid(series_uid, "series_uid")

        def nbia() -> list[str]:
            frame = self._query(
                "getSOPInstanceUIDs", {"SeriesInstanceUID": uid}, collection=collection, uid=uid
            )
            return frame["SOPInstanceUID"].dropna().tolist()

        def idc() -> list[str]:
            from .idc_fetch import instances

            return [str(o.sop_instance_uid) for o in instances(self, uid)]

        return on_files_backend(self, nbia, idc)

    def dicom_tags(self, series_uid: str, *, collection: str | None = None) -> pd.DataFrame:
        """The DICOM header of one instance of a series: element, name, data (on IDC, read from
        the first bytes of one object)."""
        uid = validate_uid(series_uid, "series_uid")

        def idc() -> pd.DataFrame:
            from .idc_fetch import read_header, tag_rows

            return frame_from_records(tag_rows(read_header(self, uid)), SCHEMAS["getDicomTags"])

        return on_files_backend(
            self,
            lambda: self._query("getDicomTags", {"SeriesUID": uid}, collection=collection,
                                uid=uid),
            idc,
        )

    def value_counts(
        self,
        of: str,
        *,
        collection: str | None = None,
        modality: str | None = None,
        body_part: str | None = None,
    ) -> pd.DataFrame:
        """Counts per collection, modality, body part or manufacturer (the *ValuesAndCounts).

        Parameters
        ----------
        of : {"collection", "modality", "body_part", "manufacturer"}
            What to count.
        """
        endpoints = {
            "collection": "getCollectionValuesAndCounts",
            "modality": "getModalityValuesAndCounts",
            "body_part": "getBodyPartValuesAndCounts",
            "manufacturer": "getManufacturerValuesAndCounts",
        }
        if of not in endpoints:
            raise ValueError(f"of must be one of {sorted(endpoints)}, not {of!r}")
        params = _params(collection=collection, modality=modality, body_part=body_part)
        return self._query(endpoints[of], params, collection=collection)

    # -- images -----------------------------------------------------------------------------------

    def single_image(
        self, series_uid: str, sop_instance_uid: str, *, collection: str | None = None
    ) -> bytes:
        """The bytes of one DICOM instance (getSingleImage, or one GET of its IDC object), with
        no use of the series cache."""
        params = {
            "SeriesInstanceUID": validate_uid(series_uid, "series_uid"),
            "SOPInstanceUID": validate_uid(sop_instance_uid, "sop_instance_uid"),
        }

        def fetch(host: str) -> bytes:
            return bytes(self._transport.fetch("GET", host + "getSingleImage", params=params)[0])

        def idc() -> bytes:
            from .idc_fetch import read_instance

            return read_instance(self, params["SeriesInstanceUID"], params["SOPInstanceUID"])

        return on_files_backend(
            self,
            lambda: self.on_series_host(params["SeriesInstanceUID"], fetch,
                                        collection=collection),
            idc,
        )

    @property
    def cache(self) -> SeriesCache:
        """SeriesCache: the verified series under :attr:`cache_dir` (looked up with no request)."""
        return SeriesCache(self.cache_dir)

    def fetch_series(self, series_uid: str, *, collection: str | None = None) -> CachedSeries:
        """One series from the cache, else downloaded, verified and cached, from NBIA or IDC as
        ``settings.backend`` says (see :func:`intake_tcia.backends.fetch_series`)."""
        from .backends import fetch_series

        return fetch_series(self, series_uid, collection=collection)

    def download(
        self,
        series: Any,
        dest: str | Path,
        *,
        on_error: str = "raise",
        layout: str = DEFAULT_LAYOUT,
        workers: int | None = None,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Download series into a folder tree, verified, resuming what is already there.

        Parameters
        ----------
        series : str, list of str, pandas.DataFrame or path
            One SeriesInstanceUID, several, a DataFrame with a ``SeriesInstanceUID`` column
            (its other metadata columns, ``Collection`` above all, spare lookups), or the path
            of a ``.tcia`` manifest.
        dest : str or Path
            The folder to fill.
        on_error : {"raise", "return"}
            After every series has been tried: raise one :class:`DownloadError` listing the
            failures (the table on its ``.results``), or return the table, failures included.
        layout : str
            Where each series goes under ``dest``, a template of series metadata fields
            (``"{SeriesInstanceUID}"`` for a flat layout). Values are made safe as folder names.
        workers : int, optional
            Series downloaded at once (default ``settings.workers``).
        progress : bool
            Show a progress bar of bytes (tqdm).

        Returns
        -------
        pandas.DataFrame
            One row per series: SeriesInstanceUID, status (``"downloaded"``, ``"cached"`` or
            ``"failed"``), path (its folder), files, bytes (DICOM bytes), error.

        Raises
        ------
        ValueError
            Before any request, for malformed UIDs (all named), an unknown ``on_error`` or a
            layout field that is not a series metadata column.
        DownloadError
            With ``on_error="raise"``, if any series failed.

        Examples
        --------
        >>> c.download(c.series(collection="LIDC-IDRI", modality="CT"), "data")  # doctest: +SKIP
        """
        from .download import download

        return download(
            self, series, dest, on_error=on_error, layout=layout, workers=workers,
            progress=progress,
        )

    def read_series(
        self, series_uid: str, *, collection: str | None = None
    ) -> list[pydicom.Dataset]:
        """The pydicom datasets of one series, fetched once into the cache, sorted by position
        along the slice normal (ascending): a list with a one-line repr
        (:class:`~intake_tcia.datasets.DatasetList`)."""
        from .datasets import DatasetList
        from .download import read_series

        return DatasetList(read_series(self, series_uid, collection=collection))

    def annotations(self, series_uid: str, *, collection: str | None = None) -> pd.DataFrame:
        """The SEG, RTSTRUCT and RTDOSE series that refer to an image series.

        Looks among the series of the image's study (two getSeries queries) at each candidate's
        header (from the cache, else one getDicomTags request): SEG and RTSTRUCT name the image
        series they were made on; RTDOSE, which names none, counts when it shares the image's
        Frame of Reference UID.

        Returns
        -------
        pandas.DataFrame
            The getSeries columns of each annotation series, plus ``ReferencedSeriesInstanceUID``
            (``series_uid``) and ``ReferencedBy`` (``"series"`` or ``"frame of reference"``);
            empty, same columns, when nothing refers to it.

        Raises
        ------
        TCIANotFoundError
            No series ``series_uid``.
        """
        from ._references import annotations

        return annotations(self, validate_uid(series_uid, "series_uid"), collection=collection)

    def read_segmentation(
        self, annotation_series_uid: str, *, collection: str | None = None, **options: Any
    ) -> Any:
        """A SEG or RTSTRUCT series as masks on the image series it refers to.

        Both series are fetched once into the cache (see :meth:`fetch_series`), then read by
        :func:`intake_tcia.segmentation.read_segmentation` (``**options``: ``stack``,
        ``atol_mm``, ``threshold``, ``holes``).

        Returns
        -------
        intake_tcia.segmentation.Segmentation

        Raises
        ------
        intake_tcia.segmentation.SegmentationError
            Not a SEG or RTSTRUCT series, or it names no single image series.
        """
        from ._references import read_annotation_series

        uid = validate_uid(annotation_series_uid, "annotation_series_uid")
        return read_annotation_series(self, uid, collection=collection, **options)

    def datacite(self, doi: str) -> dict[str, Any] | None:
        """The DataCite attributes of a DOI (title, creators, year, ...), or None if unknown."""
        doi = validate_text(doi, "doi")
        try:
            rows = self._transport.get_json(self.settings.datacite_url + "dois/" + doi)
        except TCIANotFoundError:
            return None
        attributes = rows[0].get("data", {}).get("attributes") if rows else None
        return attributes if isinstance(attributes, dict) else None

    # -- decoded series ---------------------------------------------------------------------------

    def read_volume(
        self, series_uid: str, *, collection: str | None = None, lazy: bool = False,
        **options: Any,
    ) -> Any:
        """One series as a :class:`~intake_tcia.volume.Volume`, fetched once into the cache.

        ``lazy`` and ``**options`` (``stack``, ``rtol``, ``allow_tilt``) are those of
        :func:`intake_tcia.volume.volume_from_files`.
        """
        from .volume import volume_from_files

        files = self.fetch_series(series_uid, collection=collection).files
        return volume_from_files(files, lazy=lazy, **options)


with_keyword_hints(TCIAClient)


def _client_from_settings(settings: Settings) -> TCIAClient:
    return TCIAClient(settings=settings.with_secrets_from_env())


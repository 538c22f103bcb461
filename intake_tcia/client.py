"""TCIAClient: the archive as methods that return typed pandas DataFrames, whichever source answers.

The client is a facade. Each public method checks its arguments (before any request), then asks
its :class:`~intake_tcia.routing.Router`, which picks the backend that answers as
``settings.backend`` says: :class:`~intake_tcia.nbia.backend.NBIABackend` (the NBIA v4 API, its
hosts and dialects) or :class:`~intake_tcia.idc.backend.IDCBackend` (the IDC index and buckets).
Every answer has the endpoint's fixed schema (:mod:`intake_tcia.schema`).

Names: an empty answer to a filter that names a collection, patient, modality or body part the
archive does not have raises :class:`~intake_tcia.errors.TCIAUnknownNameError`, naming the closest
real names; the listings that check needs are asked for only then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import requests

from ._validate import format_query_date, validate_date, validate_text, validate_uid
from .config import Settings
from .criteria import PAGE_SIZE, doi_url, search_form
from .errors import TCIAUnknownNameError
from .idc.backend import IDCBackend
from .idc.index import IDCIndex
from .manifest import as_series_uids
from .nbia.backend import NBIABackend
from .nbia.search import description_text
from .retrieval.cache import CachedSeries, SeriesCache
from .retrieval.layouts import DEFAULT_LAYOUT
from .routing import Router

if TYPE_CHECKING:
    import pydicom

__all__ = ["TCIAClient"]


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
        NBIA servers (:mod:`intake_tcia.nbia.flavours`).

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
        self.cache = SeriesCache(self.settings.cache_dir)
        nbia = NBIABackend(self.settings, session or requests.Session(), self.cache)
        self._transport = nbia.transport  # the one transport, shared by both backends
        self._router = Router(self.settings, self.cache, nbia,
                              IDCBackend(self.settings, self._transport, self.cache))

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

    # -- asking the router ------------------------------------------------------------------------

    def _query(
        self,
        endpoint: str,
        params: dict[str, str],
        *,
        collection: str | None = None,
        uid: str | None = None,
    ) -> pd.DataFrame:
        """The answer of the backend the router picks (NBIA: the host that may hold it). No
        rows: a name filter the archive lacks is an error."""
        frame = self._router.query(endpoint, params, collection=collection, uid=uid)
        if frame.empty:
            self._check_names(params, endpoint)
        return frame

    def _every_host(
        self, endpoint: str, params: dict[str, str], *, collection: str | None = None
    ) -> pd.DataFrame:
        """Every NBIA host's answer joined (only ``collection``'s host, when given)."""
        return self._router.query(endpoint, params, collection=collection, every_host=True)

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
                known = self._every_host(listing, scope, collection=collection)[column]
            else:
                known = self._every_host(listing, {})[column]
            known = known.dropna().astype(str)
            if value.lower() not in set(known.str.lower()):
                where = f"collection {collection!r}" if name == "PatientID" and collection else (
                    "the archive")
                url = self.settings.api_url + endpoint
                raise TCIAUnknownNameError(keyword, value, known, url, where)

    @property
    def idc_index(self) -> IDCIndex:
        """IDCIndex: the IDC index of ``settings.idc_index``, opened once per process."""
        return self._router.idc.index

    # -- the query endpoints ---------------------------------------------------------------------

    def collections(self) -> pd.DataFrame:
        """Every collection, NLST (from its own host) included.

        Returns
        -------
        pandas.DataFrame
            One column, ``Collection``.
        """
        return self._every_host("getCollectionValues", {})

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
        return self._every_host("getUpdatedSeries", params)

    def series_metadata(self, series_uids: str | Iterable[str]) -> pd.DataFrame:
        """Detailed metadata of series (getSeriesMetadata), pixel spacing and slice thickness too.

        UIDs are sent 10,000 at a time, each batch to the host that holds it (one at a time to
        v1/v2 and legacy hosts, whose getSeriesMetaData takes one SeriesInstanceUID).
        """
        return self._router.series_metadata(as_series_uids(series_uids))

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
        return self._every_host("getContentsByName", params)

    def search(self, *, page_size: int = PAGE_SIZE, **criteria: Any) -> pd.DataFrame:
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
        """
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a whole number >= 1, not {page_size!r}")
        form = search_form(**criteria)
        return self._router.search(form, collections=criteria.get("collection"),
                                   page_size=page_size)

    def collection_descriptions(self, collection: str | None = None) -> pd.DataFrame:
        """collectionName, description (HTML, as kept by NBIA), descriptionURI, id, and
        descriptionText (the description as plain text), of one collection or of all."""
        params = {} if collection is None else {"collectionName": validate_text(
            collection, "collection")}
        frame = self._every_host("getCollectionDescriptions", params, collection=collection)
        frame["descriptionText"] = frame["description"].map(description_text).astype(
            frame["description"].dtype)
        return frame

    def series_for_doi(self, doi: str, *, level: str = "series") -> pd.DataFrame:
        """What a DOI (``10.7937/...``, ``https://doi.org/...`` or ``doi:...``) names in NBIA.

        ``level="series"``: one row per series (SeriesInstanceUID, Collection,
        ThirdPartyAnalysis, Authorized); ``level="collection"``: one row per collection, the
        same columns with SeriesInstanceUID null. Empty when no series carries the DOI.
        """
        if level not in ("series", "collection"):
            raise ValueError(f"level must be 'series' or 'collection', not {level!r}")
        form = {"DOI": doi_url(doi), "CollectionOrSeries": level}
        return self._router.query("getCollectionOrSeriesForDOI", form)

    def series_size(self, series_uid: str, *, collection: str | None = None) -> dict[str, int]:
        """``{"TotalSizeInBytes": int, "ObjectCount": int}`` of one series (uncompressed bytes).

        ``collection``, when known, routes the request straight to the right host.
        """
        uid = validate_uid(series_uid, "series_uid")
        return self._router.series_size(uid, collection=collection)

    def sop_instance_uids(self, series_uid: str, *, collection: str | None = None) -> list[str]:
        """The SOPInstanceUIDs of one series' instances (``collection`` routes, as above); on
        IDC, read from the first bytes of each object, once (kept in the cache directory)."""
        uid = validate_uid(series_uid, "series_uid")
        return self._router.on_files(lambda b: b.instance_uids(uid, collection=collection))

    def dicom_tags(self, series_uid: str, *, collection: str | None = None) -> pd.DataFrame:
        """The DICOM header of one instance of a series: element, name, data (on IDC, read from
        the first bytes of one object)."""
        uid = validate_uid(series_uid, "series_uid")
        return self._router.on_files(lambda b: b.header(uid, collection=collection))

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
        uid = validate_uid(series_uid, "series_uid")
        sop_uid = validate_uid(sop_instance_uid, "sop_instance_uid")
        return self._router.on_files(lambda b: b.instance(uid, sop_uid, collection=collection))

    def fetch_series(self, series_uid: str, *, collection: str | None = None) -> CachedSeries:
        """One series from the cache, else downloaded, verified and cached, from NBIA or IDC as
        ``settings.backend`` says (see :meth:`intake_tcia.routing.Router.fetch_series`)."""
        return self._router.fetch_series(series_uid, collection=collection)

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
        from .retrieval.download import download

        return download(
            self._router, series, dest, on_error=on_error, layout=layout, workers=workers,
            progress=progress,
        )

    def read_series(
        self, series_uid: str, *, collection: str | None = None
    ) -> list[pydicom.Dataset]:
        """The pydicom datasets of one series, fetched once into the cache, sorted by position
        along the slice normal (ascending)."""
        import pydicom

        from .volume import sort_slices_by_position

        series = self.fetch_series(series_uid, collection=collection)
        return sort_slices_by_position(pydicom.dcmread(path) for path in series.files)

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
        from .annotations import annotations

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
        from .annotations import read_annotation_series

        uid = validate_uid(annotation_series_uid, "annotation_series_uid")
        return read_annotation_series(self, uid, collection=collection, **options)

    def datacite(self, doi: str) -> dict[str, Any] | None:
        """The DataCite attributes of a DOI (title, creators, year, ...), or None if unknown."""
        return self._router.nbia.datacite(validate_text(doi, "doi"))


def _client_from_settings(settings: Settings) -> TCIAClient:
    return TCIAClient(settings=settings.with_secrets_from_env())


"""The query endpoints of :class:`~intake_tcia.client.TCIAClient`: arguments checked, frames out.

Each method turns Python keywords into the endpoint's v4 parameters (validated before any
request), asks the client's router, and checks names when the answer is empty.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

from ._lazy import pandas as pd
from ._validate import format_query_date, validate_date, validate_text, validate_uid
from .criteria import PAGE_SIZE, doi_url, search_form
from .errors import TCIAUnknownNameError
from .hints import check_keywords, check_search_names
from .manifest import as_series_uids
from .routing import Router

__all__ = ["QueryMethods"]

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


class QueryMethods:
    """Metadata queries, each answered as one endpoint's typed DataFrame."""

    router: Router

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
        rows: a name filter the archive lacks is an error. An IDC collection id (``lidc_idri``)
        is asked as TCIA's name (:meth:`_collection_name`)."""
        if "Collection" in params:
            collection = self._collection_name(params["Collection"])
            params = {**params, "Collection": collection}
        frame = self.router.query(endpoint, params, collection=collection, uid=uid)
        if frame.empty:
            self._check_names(params, endpoint)
        return frame

    def _collection_name(self, collection: Any) -> Any:
        """TCIA's name of a collection given as an IDC id (``lidc_idri``) or as TCIA's name (one
        or several); see :mod:`intake_tcia.idc.names`."""
        from .idc.names import collection_names

        return collection_names(self.settings, collection)

    def _every_host(
        self, endpoint: str, params: dict[str, str], *, collection: str | None = None
    ) -> pd.DataFrame:
        """Every NBIA host's answer joined (only ``collection``'s host, when given)."""
        return self.router.query(endpoint, params, collection=collection, every_host=True)

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
        return self.router.series_metadata(as_series_uids(series_uids))

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
        TCIAUnknownNameError
            Nothing found, and a collection, patient, modality or body part named is not in
            the archive (the closest names suggested).
        """
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a whole number >= 1, not {page_size!r}")
        check_keywords(criteria, inspect.signature(search_form).parameters,
                       "TCIAClient.search()")
        if "collection" in criteria:
            criteria["collection"] = self._collection_name(criteria["collection"])
        form = search_form(**criteria)
        frame = self.router.search(form, collections=criteria.get("collection"),
                                    page_size=page_size)
        if frame.empty:
            check_search_names(self, criteria)
        return frame

    def collection_descriptions(self, collection: str | None = None) -> pd.DataFrame:
        """collectionName, description (HTML, as kept by NBIA), descriptionURI, id, and
        descriptionText (the description as plain text), of one collection or of all."""
        from .nbia.search import description_text

        if collection is not None:
            collection = self._collection_name(validate_text(collection, "collection"))
        params = {} if collection is None else {"collectionName": collection}
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
        return self.router.query("getCollectionOrSeriesForDOI", form)
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

    def datacite(self, doi: str) -> dict[str, Any] | None:
        """The DataCite attributes of a DOI (title, creators, year, ...), or None if unknown."""
        return self.router.nbia.datacite(validate_text(doi, "doi"))

"""NBIA's advanced search over one host's series: getSimpleSearch, getManifestForSimpleSearch,
getCollectionOrSeriesForDOI, and getCollectionDescriptions as the v4 code renders it.

What the server does, read from CBIIT/NBIA-TCIA (``SearchUtil.getPatients_v4``,
``PatientSearcher.searchForPatientsExtended_v4``, ``DICOMQueryHandlerImpl``,
``PatientSummaryFactory``, ``GetManifestForSimpleSearch``, ``ManifestMaker``,
``GeneralSeriesDAOImpl.getCollectionOrSeriesForDOI_v4``, ``JSONUtil``):

* Form fields ``criteriaType0``/``value0``, ``criteriaType1``/``value1``, ... are read until an
  index is missing. Values of one type are ORed, types are ANDed; unknown types are ignored and
  no parameter is refused. Names match case-insensitively (MySQL collation), species codes and
  UIDs exactly.
* ``DateRangeCriteria`` reads ``fromDate{i}``/``toDate{i}`` (``MM-dd-yyyy``) and keeps series
  whose DateReleased lies between them, both included.
* ``AnatomicalSiteCriteria`` (or ``BodyPartExaminedCriteria``): the value ``NOT SPECIFIED``
  matches a null body part.
* ``MinNumberOfStudiesCriteria`` ``v`` keeps patients with **more than** ``v`` matching studies.
* ``ModalityAndedSearchCriteria`` ``all``: patients holding a series of every modality asked;
  the modality criteria then select patients, not series.
* ``sortField``, ``sortDirection``, ``start`` and ``size`` are required; pages are
  ``subList(start, min(start + size, n))`` of the sorted patients.
* Any failure (a missing field, a number or date that does not parse, a page past the end) is a
  500, ``text/plain``: ``Server was not able to process your request`` and the Java message.
* getSimpleSearch answers a JSON object (``resultSet``: one patient per element with internal
  study and series ids, not UIDs; ``totalPatients``; value counts), nulls left out;
  getManifestForSimpleSearch answers the UIDs of the page's series as a ``.tcia`` manifest.
* getCollectionOrSeriesForDOI (POST ``DOI``, ``CollectionOrSeries``; any other parameter is a
  400 naming it) matches DataDescriptionURI to the DOI exactly as given, an empty DOI matching
  everything; JSON keys ``collection``, ``seriesInstanceUID``, ``thirdPartyAnanlysis`` (sic),
  ``authorized``, nulls left out, ``[]`` for none.
* getCollectionDescriptions takes only ``collectionName`` (``format`` too is a 400) and
  answers JSON with nulls kept, ``[]`` for none.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pandas as pd

from ._hostview import ApiError, HostView

__all__ = ["simple_search", "manifest_for_simple_search", "collection_or_series_for_doi",
           "collection_descriptions"]

_FAILED = "Server was not able to process your request"
_JSON = "application/json"
#: The header ManifestMaker writes, with TCIA's configuration values.
_MANIFEST_HEAD = (
    "downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/"
    "DownloadServlet\nincludeAnnotation=false\nnoOfrRetry=4\ndatabasketId={name}\n"
    "manifestVersion=3.0\nListOfSeriesToDownload=\n"
)
#: criteriaType (lower case) -> the column its values select, and whether it ignores case.
_VALUE_CRITERIA = {
    "collectioncriteria": ("Collection", True),
    "speciescriteria": ("SpeciesCode", False),
    "imagemodalitycriteria": ("Modality", True),
    "anatomicalsitecriteria": ("BodyPartExamined", True),
    "bodypartexaminedcriteria": ("BodyPartExamined", True),
    "manufacturercriteria": ("Manufacturer", True),
    "modelcriteria": ("ManufacturerModelName", True),
    "patientcriteria": ("PatientID", True),
    "studycriteria": ("StudyInstanceUID", False),
    "seriescriteria": ("SeriesInstanceUID", False),
}
_NOT_SPECIFIED = "NOT SPECIFIED"
_PATIENT = ["Collection", "PatientID"]
_MDY = re.compile(r"([0-9]{1,2})-([0-9]{1,2})-([0-9]{4})")


def _failure(message: object) -> ApiError:
    return ApiError(500, f"{_FAILED}\n{message}")


def _field(params: dict[str, str], name: str) -> str:
    """A form field the server reads with ``get(name).get(0)``: missing, a NullPointerException."""
    if name not in params:
        raise _failure("null")
    return params[name]


def _java_int(text: str) -> int:
    if not re.fullmatch(r"[-+]?[0-9]+", text):
        raise _failure(f'For input string: "{text}"')
    return int(text)


def _date(text: str) -> pd.Timestamp:
    match = _MDY.fullmatch(text)
    if not match:
        raise _failure(f'Unparseable date: "{text}"')
    month, day, year = (int(g) for g in match.groups())
    # SimpleDateFormat is lenient: month 13 is January of the next year, day 0 the last of the
    # month before
    return pd.Timestamp(year, 1, 1) + pd.DateOffset(months=month - 1) + pd.Timedelta(days=day - 1)


def _matching(view: HostView, params: dict[str, str]) -> tuple[pd.DataFrame, int, bool]:
    """The series the criteria select, the minimum-studies value (-1: none), and whether the
    modalities were ANDed."""
    table = view.table
    values: dict[str, list[str]] = {}
    modalities: list[str] = []
    released: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    min_studies, anded = -1, False
    i = 0
    while f"criteriaType{i}" in params:
        kind = params[f"criteriaType{i}"].lower()
        if kind in _VALUE_CRITERIA:
            values.setdefault(kind, []).append(_field(params, f"value{i}"))
        elif kind == "daterangecriteria":
            released = [(_date(_field(params, f"fromDate{i}")),
                         _date(_field(params, f"toDate{i}")))]
        elif kind == "minnumberofstudiescriteria":
            min_studies = _java_int(_field(params, f"value{i}"))
        elif kind == "modalityandedsearchcriteria":
            anded = _field(params, f"value{i}") == "all"
        i += 1
    mask = pd.Series(True, index=table.index)
    for kind, wanted in values.items():
        column, folded = _VALUE_CRITERIA[kind]
        if kind == "imagemodalitycriteria" and anded:
            modalities = wanted
            continue
        cells = view.upper(column) if folded else table[column]
        keys = {w.upper() for w in wanted} if folded else set(wanted)
        hit = cells.isin(keys)
        if column == "BodyPartExamined" and _NOT_SPECIFIED in keys:
            hit |= cells.isna()
        mask &= hit
    for start, end in released:
        mask &= (view.released >= start) & (view.released <= end)
    for modality in modalities:
        holders = table.loc[view.upper("Modality") == modality.upper(), _PATIENT]
        mask &= pd.MultiIndex.from_frame(table[_PATIENT]).isin(
            pd.MultiIndex.from_frame(holders))
    return table[mask.to_numpy(dtype=bool)], min_studies, anded


def _ids(view: HostView) -> tuple[pd.Series, pd.Series]:
    """Internal patient and study ids (the server's primary keys), stable per host view."""
    table = view.table
    patient = pd.factorize(pd.MultiIndex.from_frame(table[_PATIENT]))[0] + 1
    study = pd.factorize(table["StudyInstanceUID"])[0] + 1
    return pd.Series(patient, index=table.index), pd.Series(study, index=table.index)


def _patients(view: HostView, params: dict[str, str]) -> list[dict[str, Any]]:
    """The patients the criteria select, sorted as ``sortField``/``sortDirection`` ask; kept
    per criteria, as NBIA's PatientResultSetCache keeps them, so later pages cost little."""
    key = tuple(sorted((k, v) for k, v in params.items() if k not in ("start", "size")))
    cache = view.__dict__.setdefault("_search_cache", {})
    if key not in cache:
        if len(cache) > 64:
            cache.clear()
        cache[key] = _select_patients(view, params)
    return cache[key]


def _select_patients(view: HostView, params: dict[str, str]) -> list[dict[str, Any]]:
    rows, min_studies, anded = _matching(view, params)
    sort_field = _field(params, "sortField").lower()
    descending = _field(params, "sortDirection").lower() != "ascending"
    patient_ids, study_ids = _ids(view)
    totals = view.table.assign(_patient=patient_ids).groupby("_patient").agg(
        studies=("StudyInstanceUID", "nunique"), series=("SeriesInstanceUID", "size"))
    patients = []
    # .to_numpy(): assigning a Series to an empty frame would take the Series' index
    keyed = rows.assign(_patient=patient_ids.loc[rows.index].to_numpy(),
                        _study=study_ids.loc[rows.index].to_numpy())
    for pk, group in keyed.groupby("_patient", sort=True):
        studies = []
        for study_pk, series in group.groupby("_study", sort=True):
            pairs = [{"seriesId": int(s + 1), "modality": m}
                     for s, m in zip(series.index, series["Modality"], strict=True)]
            studies.append({"studyIdentifier": int(study_pk),
                            "seriesIdentifiers": [p["seriesId"] for p in pairs],
                            "seriesAndModality": pairs if anded else []})
        if len(studies) <= min_studies:
            continue
        first = group.iloc[0]
        patients.append({
            "subjectId": first["PatientID"], "project": first["Collection"], "id": int(pk),
            "studyIdentifiers": studies,
            "totalNumberOfStudies": int(totals.loc[pk, "studies"]),
            "totalNumberOfSeries": int(totals.loc[pk, "series"]),
            "modalities": sorted(group["Modality"].dropna().unique().tolist()),
            "bodyParts": sorted(group["BodyPartExamined"].dropna().str.upper().unique().tolist()),
            "species": sorted(group["SpeciesCode"].dropna().unique().tolist()),
            "timepoints": {},
            "authorized": 1,
        })
    keys = {
        "subject": lambda p: p["subjectId"].upper(),
        "study": lambda p: len(p["studyIdentifiers"]),
        "series": lambda p: sum(len(s["seriesIdentifiers"]) for s in p["studyIdentifiers"]),
        "totalnumberofseries": lambda p: p["totalNumberOfSeries"],
        "totalnumberofstudies": lambda p: p["totalNumberOfStudies"],
    }
    key = keys.get(sort_field, lambda p: p["project"].upper())  # "collection" and unknown fields
    return sorted(patients, key=key, reverse=descending)


def _page(patients: list[dict[str, Any]], params: dict[str, str]) -> list[dict[str, Any]]:
    """``subList(start, start + size)``, size cut to what is left, as the server pages."""
    start = _java_int(_field(params, "start"))
    size = _java_int(_field(params, "size"))
    if start + size > len(patients):
        size = len(patients) - start
    if start < 0:
        raise _failure(f"fromIndex = {start}")
    if size < 0:
        raise _failure(f"fromIndex({start}) > toIndex({start + size})")
    return patients[start:start + size]


def _value_counts(patients: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    for patient in patients:
        values = patient[key] if key != "project" else [patient["project"]]
        if key == "bodyParts" and not values:
            values = [_NOT_SPECIFIED]
        for value in values:
            counts[value] = counts.get(value, 0) + 1
    return [{"value": v, "count": n} for v, n in sorted(counts.items())]


def simple_search(view: HostView, params: dict[str, str]) -> tuple[bytes, str]:
    """getSimpleSearch: one page of the patients the criteria select, and summary counts."""
    patients = _patients(view, params)
    summary = {
        "resultSet": _page(patients, params),
        "totalPatients": len(patients),
        "bodyParts": _value_counts(patients, "bodyParts"),
        "modalities": _value_counts(patients, "modalities"),
        "collections": _value_counts(patients, "project"),
        "species": _value_counts(patients, "species"),
        "maxTimepoints": {},
        "minTimepoints": {},
        "sort": f"{params['sortField']}-{params['sortDirection']}",
    }
    return json.dumps(summary).encode(), _JSON


def manifest_for_simple_search(view: HostView, params: dict[str, str]) -> tuple[bytes, str]:
    """getManifestForSimpleSearch: the series of one page of patients, as a ``.tcia`` text."""
    page = _page(_patients(view, params), params)
    pks = sorted(s for p in page if p["authorized"] == 1
                 for study in p["studyIdentifiers"] for s in study["seriesIdentifiers"])
    uids = view.table["SeriesInstanceUID"].to_numpy()[[pk - 1 for pk in pks]]
    head = _MANIFEST_HEAD.format(name=f"manifest-{int(time.time() * 1000)}.tcia")
    return (head + "".join(f"{uid}\n" for uid in uids)).encode(), "application/x-nbia-manifest-file"


def collection_or_series_for_doi(view: HostView, params: dict[str, str]) -> tuple[bytes, str]:
    """getCollectionOrSeriesForDOI: the collections (or series) whose DataDescriptionURI is
    the DOI."""
    allowed = ("DOI", "CollectionOrSeries")
    for name in params:
        if name not in allowed:
            raise ApiError(400, f"Invalid form parameter: '{name}'. Allowed parameters are: "
                                f"[{', '.join(allowed)}]")
    table = view.table
    doi = params.get("DOI", "")
    if doi:
        table = table[table["DataDescriptionURI"].str.upper() == doi.upper()]
    series = params.get("CollectionOrSeries", "").lower() == "series"
    keys = ["Collection", "ThirdPartyAnalysis"] + (["SeriesInstanceUID"] if series else [])
    rows = []
    for values in table[keys].drop_duplicates().itertuples(index=False):
        found = dict(zip(keys, values, strict=True))
        row = {"collection": found["Collection"],
               "seriesInstanceUID": found.get("SeriesInstanceUID"),
               "thirdPartyAnanlysis": found["ThirdPartyAnalysis"], "authorized": 1}
        rows.append({k: v for k, v in row.items() if v is not None and v == v})
    return json.dumps(rows).encode(), _JSON


def collection_descriptions(view: HostView, params: dict[str, str]) -> tuple[bytes, str]:
    """getCollectionDescriptions: collectionName, description (HTML), id, descriptionURI."""
    for name in params:
        if name != "collectionName":
            raise ApiError(400, f"Invalid query parameter: '{name}'. Allowed parameters are: "
                                "[collectionName]")
    names = sorted(view.table["Collection"].dropna().unique())
    wanted = params.get("collectionName")
    numbered = sorted(view.archive.collections)
    rows = [{"collectionName": info.name, "description": info.description,
             "id": numbered.index(info.name) + 1, "descriptionURI": info.doi_url}
            for info in map(view.archive.collection, names)
            if not wanted or info.name.upper() == wanted.upper()]
    return json.dumps(rows).encode(), _JSON

"""The NBIA v4 query endpoints over one host's series table.

Each endpoint declares its allowed and required parameters; its function takes a :class:`HostView`
and the request parameters and returns a DataFrame with the endpoint's columns in the server's
order (empty for no rows). Errors are raised as :class:`ApiError` carrying the server's text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import pydicom

from . import _search
from ._hostview import ApiError, HostView, not_granted
from .builder import SERIES_COLUMNS

PATIENT_COLUMNS = ("PatientId", "PatientName", "PatientSex", "EthnicGroup", "Collection",
                   "Phantom", "SpeciesCode", "SpeciesDescription", "Authorized")
STUDY_COLUMNS = ("StudyInstanceUID", "StudyDate", "StudyDescription",
                 "AdmittingDiagnosesDescription", "StudyID", "PatientAge", "PatientID",
                 "PatientName", "PatientSex", "EthnicGroup", "Collection", "SeriesCount",
                 "LongitudinalTemporalEventType", "LongitudinalTemporalOffsetFromEvent",
                 "Authorized")
#: getSeriesMetadata's quoted-CSV columns (v4 names, as samples/getSeriesMetadata_200_example.csv).
METADATA_COLUMNS = ("PatientID", "PatientName", "PatientSex", "EthnicGroup", "Phantom",
                    "SpeciesCode", "SpeciesDescription", "StudyInstanceUID", "StudyDate",
                    "StudyDesc", "AdmittingDiagnosisDescription", "StudyID", "PatientAge",
                    "LongitudinalTemporalEventType", "LongitudinalTemporalOffsetFromEvent",
                    "SeriesInstanceUID", "Collection", "Site", "Modality", "ProtocolName",
                    "SeriesDate", "SeriesDescription", "BodyPartExamined", "SeriesNumber",
                    "AnnotationsFlag", "Manufacturer", "ManufacturerModelName",
                    "PixelSpacing(mm)-Row", "SliceThickness(mm)", "SoftwareVersions",
                    "ImageCount", "MaxSubmissionTimestamp", "LicenseName", "LicenseURI",
                    "DataDescriptionURI", "FileSize", "ReleasedStatus", "DateReleased",
                    "ThirdPartyAnalysis", "Authorized")


def _values(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    values = rows[column].drop_duplicates().tolist()
    values.sort(key=lambda v: (v is not None, str(v)))
    return pd.DataFrame({column: values}, dtype=object)


def _counts(rows: pd.DataFrame, column: str, key: str) -> pd.DataFrame:
    counts = (rows.assign(_v=rows[column].fillna("\0")).groupby("_v", sort=True)["PatientID"]
              .nunique())
    return pd.DataFrame({
        key: [None if v == "\0" else v for v in counts.index],
        "Count": counts.to_numpy(),
        "Authorized": 1,
    })


def _patients(rows: pd.DataFrame) -> pd.DataFrame:
    patients = rows.drop_duplicates(["Collection", "PatientID"]).rename(
        columns={"PatientID": "PatientId"})
    return patients.reindex(columns=list(PATIENT_COLUMNS)).reset_index(drop=True)


def _studies(rows: pd.DataFrame) -> pd.DataFrame:
    counts = rows.groupby("StudyInstanceUID", sort=False).size()
    studies = rows.drop_duplicates("StudyInstanceUID").rename(columns={
        "StudyDesc": "StudyDescription",
        "AdmittingDiagnosisDescription": "AdmittingDiagnosesDescription",
    })
    studies = studies.assign(SeriesCount=counts.loc[studies["StudyInstanceUID"]].to_numpy())
    return studies.reindex(columns=list(STUDY_COLUMNS)).reset_index(drop=True)


def _series(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.loc[:, list(SERIES_COLUMNS)].reset_index(drop=True)


def _one_series(view: HostView, uid: str) -> pd.DataFrame:
    return view.table[view.table["SeriesInstanceUID"] == uid]


def get_series_size(view: HostView, params: dict[str, str]) -> pd.DataFrame:
    """TotalSizeInBytes and ObjectCount of one series (empty body if unknown here)."""
    rows = _one_series(view, params["SeriesInstanceUID"])
    return pd.DataFrame({"TotalSizeInBytes": rows["FileSize"].to_numpy(),
                         "ObjectCount": rows["ImageCount"].to_numpy()})


def get_sop_instance_uids(view: HostView, params: dict[str, str]) -> pd.DataFrame:
    """The SOPInstanceUIDs of one series (empty body if unknown here)."""
    uid = params["SeriesInstanceUID"]
    sops = [sop for sop, _ in view.archive.instances(uid)] if uid in view.uids else []
    return pd.DataFrame({"SOPInstanceUID": sops}, dtype=object)


def get_series_metadata(view: HostView, params: dict[str, str]) -> pd.DataFrame:
    """Rows of getSeriesMetadata for the UIDs of form field ``list``."""
    uids = [u for u in re.sub(r"[^0-9,.]", "", params["list"]).split(",") if u]
    rows = view.table[view.table["SeriesInstanceUID"].isin(uids)]
    return rows.reindex(columns=list(METADATA_COLUMNS)).reset_index(drop=True)


def get_dicom_tags(view: HostView, params: dict[str, str]) -> pd.DataFrame:
    """The tags of a series' first instance: element, name, data (nested items prefixed '>')."""
    uid = params["SeriesUID"]
    if uid not in view.uids:
        raise not_granted(uid)
    files = view.archive.instances(uid)
    if not files:
        return pd.DataFrame()
    rows: list[tuple[str, str, str | None]] = []

    def walk(ds: pydicom.Dataset, depth: int) -> None:
        for elem in ds:
            if elem.VR in ("OB", "OW", "OF", "OD", "OL", "UN") or elem.tag.is_private:
                continue
            tag = f"{'>' * depth}({elem.tag.group:04X},{elem.tag.element:04X})"
            if elem.VR == "SQ":
                rows.append((tag, elem.name, None))
                for item in elem.value:
                    walk(item, depth + 1)
            elif elem.VM > 1:
                rows.append((tag, elem.name, "\\".join(str(v) for v in elem.value)))
            else:
                rows.append((tag, elem.name, str(elem.value)))

    walk(pydicom.dcmread(files[0][1], stop_before_pixels=True), 0)
    return pd.DataFrame(rows, columns=["element", "name", "data"])


Query = Callable[[HostView, dict[str, str]], pd.DataFrame]
#: An answer that is not a table: (body, content type).
Answer = Callable[[HostView, dict[str, str]], tuple[bytes, str]]


@dataclass(frozen=True)
class Endpoint:
    """An endpoint's name, parameters and what answers it."""

    name: str
    allowed: tuple[str, ...] | None  # None: the endpoint checks its own parameters
    required: tuple[str, ...] = ()
    query: Query | None = None
    method: str = "GET"
    formatted: bool = True  # honours ``format``
    answer: Answer | None = None  # answers a body of its own rather than a table


ENDPOINTS: dict[str, Endpoint] = {e.name: e for e in (
    Endpoint("getCollectionValues", ("format",),
             query=lambda v, p: _values(v.table, "Collection")),
    Endpoint("getModalityValues", ("Collection", "BodyPartExamined", "format"),
             query=lambda v, p: _values(v.select(p), "Modality")),
    Endpoint("getBodyPartValues", ("Collection", "Modality", "format"),
             query=lambda v, p: _values(v.select(p), "BodyPartExamined")),
    Endpoint("getManufacturerValues", ("Collection", "Modality", "BodyPartExamined", "format"),
             query=lambda v, p: _values(v.select(p), "Manufacturer")),
    Endpoint("getCollectionValuesAndCounts", ("format",),
             query=lambda v, p: _counts(v.table, "Collection", "Collection")),
    Endpoint("getModalityValuesAndCounts", ("Collection", "BodyPartExamined", "format"),
             query=lambda v, p: _counts(v.select(p), "Modality", "Modality")),
    Endpoint("getBodyPartValuesAndCounts", ("Collection", "Modality", "format"),
             query=lambda v, p: _counts(v.select(p), "BodyPartExamined", "BodyPart")),
    Endpoint("getManufacturerValuesAndCounts",
             ("Collection", "Modality", "BodyPartExamined", "format"),
             query=lambda v, p: _counts(v.select(p), "Manufacturer", "Manufacturer")),
    Endpoint("getPatient", ("Collection", "PatientID", "PatientId", "format"),
             query=lambda v, p: _patients(v.select(p, names={"PatientId": "PatientID"}))),
    Endpoint("getPatientByCollectionAndModality", ("Collection", "Modality", "format"),
             ("Collection", "Modality"),
             query=lambda v, p: _patients(v.select(p))[["PatientId", "Authorized"]]),
    Endpoint("NewPatientsInCollection", ("Collection", "fromDate", "format"),
             ("Collection", "fromDate"),
             query=lambda v, p: _patients(v.since(v.select(p), p["fromDate"], strict=False))),
    Endpoint("getPatientStudy", ("Collection", "PatientID", "StudyInstanceUID", "format"),
             query=lambda v, p: _studies(v.select(p))),
    Endpoint("NewStudiesInPatientCollection", ("Collection", "PatientID", "fromDate", "format"),
             ("Collection", "fromDate"),
             query=lambda v, p: _studies(v.since(v.select(p), p["fromDate"], strict=False))),
    Endpoint("getSeries", ("Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                           "Modality", "BodyPartExamined", "Manufacturer",
                           "ManufacturerModelName", "format"),
             query=lambda v, p: _series(v.select(p))),
    Endpoint("getUpdatedSeries", ("fromDate", "format"), ("fromDate",),
             query=lambda v, p: _series(v.since(v.table, p["fromDate"], strict=True))),
    Endpoint("getSeriesSize", ("SeriesInstanceUID", "format"), ("SeriesInstanceUID",),
             query=get_series_size),
    Endpoint("getSOPInstanceUIDs", ("SeriesInstanceUID", "format"), ("SeriesInstanceUID",),
             query=get_sop_instance_uids),
    Endpoint("getCollectionDescriptions", None, answer=_search.collection_descriptions,
             formatted=False),
    Endpoint("getSimpleSearch", None, answer=_search.simple_search, method="POST",
             formatted=False),
    Endpoint("getManifestForSimpleSearch", None, answer=_search.manifest_for_simple_search,
             method="POST", formatted=False),
    Endpoint("getCollectionOrSeriesForDOI", None, answer=_search.collection_or_series_for_doi,
             method="POST", formatted=False),
    Endpoint("getDicomTags", ("SeriesUID",), ("SeriesUID",), query=get_dicom_tags,
             formatted=False),
    Endpoint("getSeriesMetadata", ("list",), ("list",), query=get_series_metadata,
             method="POST", formatted=False),
    Endpoint("getImage", ("SeriesInstanceUID", "NewFileNames", "IncludeMD5"),
             ("SeriesInstanceUID",)),
    Endpoint("getImageWithMD5Hash", ("SeriesInstanceUID",), ("SeriesInstanceUID",)),
    Endpoint("getSingleImage", ("SeriesInstanceUID", "SOPInstanceUID"),
             ("SeriesInstanceUID", "SOPInstanceUID")),
)}
#: The real server also answers the POST under this spelling (see server.py's docstring).
ENDPOINTS["getSeriesMetaData"] = ENDPOINTS["getSeriesMetadata"]


def check_params(endpoint: Endpoint, params: dict[str, str]) -> None:
    """Raise the server's 400 for an unknown or missing parameter."""
    for name in params if endpoint.allowed is not None else ():
        if name not in endpoint.allowed:
            raise ApiError(400, f"Invalid query parameter: '{name}'. Allowed parameters are: "
                                f"[{', '.join(endpoint.allowed)}]")
    missing = [name for name in endpoint.required if not params.get(name)]
    if endpoint.name == "getSeriesMetadata" and missing:
        raise ApiError(400, "A form parameter, list, containing at least one "
                            "SeriesInstanceUID is required.")
    if len(missing) == 1:
        raise ApiError(400, f"A parameter, {missing[0]}, is required for this API call.")
    if missing:
        raise ApiError(400, f"A parameter, {' and '.join(missing)}, are required for this API "
                            "call.")

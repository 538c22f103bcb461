"""The columns and dtypes of every endpoint, and turning server rows into typed DataFrames.

NBIA drops null keys from each JSON row and answers an empty body for no rows, so the columns of an
answer cannot be read off the answer. Each endpoint's columns are therefore fixed here, in v4 names
and order; every DataFrame the client returns has exactly these columns (and, should a server send a
field not listed here, that field after them), with these dtypes:

``str``    UIDs, names, codes (pandas' string dtype)
``int``    counts and sizes (nullable ``Int64``)
``date``   dates (``datetime64[ns]``, from any of NBIA's three date styles)
``bool``   flags (nullable ``boolean``)
``float``  measurements (``Float64``)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version as _version
from typing import Any

from ._lazy import numpy as np
from ._lazy import pandas as pd

__all__ = [
    "EndpointSchema",
    "SCHEMAS",
    "OLD_NAMES",
    "frame_from_records",
    "frame_from_csv",
    "parse_dates",
    "raw_frame",
    "records_from_csv",
    "typed_frame",
    "typed_value",
    "with_old_names",
]

#: pandas' dtype of text columns: ``str`` from pandas 3 (read from its metadata, so that
#: importing this module does not import pandas).
STRING_DTYPE: Any = "str" if int(_version("pandas").split(".")[0]) >= 3 else object
_DTYPES: dict[str, Any] = {
    "str": STRING_DTYPE,
    "int": "Int64",
    "date": "datetime64[ns]",
    "bool": "boolean",
    "float": "Float64",
}

# Date styles NBIA uses, tried in this order on the values the previous style did not parse.
_DATE_FORMATS = (
    "%m-%d-%Y",  # v4:              "05-27-2015"
    "ISO8601",  # v1/v2 Timestamp: "2015-05-27 17:12:21.0", and ISO dates
    "%a %b %d %H:%M:%S UTC %Y",  # v1/v2 java.util.Date: "Mon Nov 04 11:45:52 UTC 2013"
    "%Y%m%d",  # DICOM DA:        "20160427"
    "%d/%m/%Y",  # v1/v2 query style
)


@dataclass(frozen=True)
class EndpointSchema:
    """The fixed columns of one endpoint's answer.

    Attributes
    ----------
    columns : dict of str to str
        Column name to kind (``str``, ``int``, ``date``, ``bool``, ``float``), in output order.
    renames : dict of str to str
        Server key to column name, applied first (``PatientId`` -> ``PatientID``).
    """

    columns: dict[str, str]
    renames: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """list of str: the column names, in order."""
        return list(self.columns)


def _kinds(spec: str) -> dict[str, str]:
    """Parse ``"Name:kind Name2"`` (kind defaults to str) into an ordered mapping."""
    out = {}
    for item in spec.split():
        name, _, kind = item.partition(":")
        out[name] = kind or "str"
    return out


_PATIENT = _kinds(
    "PatientID PatientName PatientSex EthnicGroup Collection Phantom SpeciesCode "
    "SpeciesDescription Authorized:int"
)
_STUDY = _kinds(
    "StudyInstanceUID StudyDate:date StudyDescription AdmittingDiagnosesDescription StudyID "
    "PatientAge PatientID PatientName PatientSex EthnicGroup Collection SeriesCount:int "
    "LongitudinalTemporalEventType LongitudinalTemporalOffsetFromEvent Authorized:int"
)
_SERIES = _kinds(
    "SeriesInstanceUID StudyInstanceUID Modality ProtocolName SeriesDate:date SeriesDescription "
    "BodyPartExamined SeriesNumber:int AnnotationsFlag:bool Collection Site PatientID PatientSex "
    "PatientAge AdmittingDiagnosisDescription Manufacturer ManufacturerModelName SoftwareVersions "
    "ImageCount:int MaxSubmissionTimestamp:date LicenseName LicenseURI DataDescriptionURI "
    "FileSize:int ReleasedStatus DateReleased:date StudyDesc StudyDate:date ThirdPartyAnalysis "
    "Authorized:int"
)
_SERIES_METADATA = _kinds(
    "PatientID PatientName PatientSex EthnicGroup Phantom SpeciesCode SpeciesDescription "
    "StudyInstanceUID StudyDate:date StudyDesc AdmittingDiagnosisDescription StudyID PatientAge "
    "LongitudinalTemporalEventType LongitudinalTemporalOffsetFromEvent SeriesInstanceUID "
    "Collection Site Modality ProtocolName SeriesDate:date SeriesDescription BodyPartExamined "
    "SeriesNumber:int AnnotationsFlag:bool Manufacturer ManufacturerModelName "
    "PixelSpacing(mm)-Row:float SliceThickness(mm):float SoftwareVersions ImageCount:int "
    "MaxSubmissionTimestamp:date LicenseName LicenseURI DataDescriptionURI FileSize:int "
    "ReleasedStatus DateReleased:date ThirdPartyAnalysis Authorized:int"
)


def _counts(value: str, server_key: str) -> EndpointSchema:
    # The *ValuesAndCounts endpoints name their keys in lower case ("bodyPart", "count").
    return EndpointSchema(
        _kinds(f"{value} Count:int Authorized:int"),
        {
            server_key: value,
            server_key[0].upper() + server_key[1:]: value,
            "count": "Count",
            "criteria": value,
        },
    )


_PATIENT_RENAMES = {"PatientId": "PatientID"}

#: The schema of every endpoint, by NBIA endpoint name.
SCHEMAS: dict[str, EndpointSchema] = {
    "getCollectionValues": EndpointSchema(_kinds("Collection"), {"collection": "Collection"}),
    "getModalityValues": EndpointSchema(_kinds("Modality")),
    "getBodyPartValues": EndpointSchema(_kinds("BodyPartExamined")),
    "getManufacturerValues": EndpointSchema(_kinds("Manufacturer")),
    "getPatient": EndpointSchema(_PATIENT, _PATIENT_RENAMES),
    "NewPatientsInCollection": EndpointSchema(_PATIENT, _PATIENT_RENAMES),
    "getPatientByCollectionAndModality": EndpointSchema(
        _kinds("PatientID Authorized:int"), _PATIENT_RENAMES
    ),
    "getPatientStudy": EndpointSchema(_STUDY, _PATIENT_RENAMES),
    "NewStudiesInPatientCollection": EndpointSchema(_STUDY, _PATIENT_RENAMES),
    "getSeries": EndpointSchema(_SERIES, _PATIENT_RENAMES),
    "getUpdatedSeries": EndpointSchema(_SERIES, _PATIENT_RENAMES),
    "getSeriesMetadata": EndpointSchema(_SERIES_METADATA, _PATIENT_RENAMES),
    "getSeriesSize": EndpointSchema(_kinds("TotalSizeInBytes:int ObjectCount:int")),
    "getSOPInstanceUIDs": EndpointSchema(_kinds("SOPInstanceUID")),
    "getDicomTags": EndpointSchema(_kinds("element name data")),
    "getCollectionDescriptions": EndpointSchema(
        _kinds("collectionName description descriptionURI id:int")
    ),
    "getCollectionOrSeriesForDOI": EndpointSchema(
        _kinds("SeriesInstanceUID Collection ThirdPartyAnalysis Authorized:int"),
        {"seriesInstanceUID": "SeriesInstanceUID", "collection": "Collection",
         "thirdPartyAnanlysis": "ThirdPartyAnalysis", "thirdPartyAnalysis": "ThirdPartyAnalysis",
         "authorized": "Authorized"},  # the server's key is spelt "Ananlysis"
    ),
    "getCollectionValuesAndCounts": _counts("Collection", "collection"),
    "getModalityValuesAndCounts": _counts("Modality", "modality"),
    "getBodyPartValuesAndCounts": _counts("BodyPartExamined", "bodyPart"),
    "getManufacturerValuesAndCounts": _counts("Manufacturer", "manufacturer"),
}

# The names NBIA v1/v2 (and the legacy TCIA API) gave fields that v4 renamed.
_OLD_SERIES_NAMES = {"TimeStamp": "MaxSubmissionTimestamp", "CollectionURI": "DataDescriptionURI"}
# v1/v2 getSeriesMetaData (JSON, spaced keys, numbers as strings); other fields are spelled as
# their v4 names split into words ("Body Part Examined"), which with_old_names adds.
_OLD_METADATA_NAMES = {
    **_OLD_SERIES_NAMES,
    "Series UID": "SeriesInstanceUID",
    "Study UID": "StudyInstanceUID",
    "Subject ID": "PatientID",
    "Number of Images": "ImageCount",
    "Data Description URI": "DataDescriptionURI",
    "License URL": "LicenseURI",
    "Study Description": "StudyDesc",
    "3rd Party Analysis": "ThirdPartyAnalysis",
}

#: Old field name -> v4 name, per endpoint (see :func:`with_old_names`).
OLD_NAMES: dict[str, dict[str, str]] = {
    "getSeries": _OLD_SERIES_NAMES,
    "getUpdatedSeries": _OLD_SERIES_NAMES,
    "getSeriesMetadata": _OLD_METADATA_NAMES,
}

#: A shared cart (v1 getContentsByName, never migrated to v4): getSeries rows in v1 names.
SCHEMAS["getContentsByName"] = EndpointSchema(_SERIES, {**_PATIENT_RENAMES, **_OLD_SERIES_NAMES})


def _spaced(name: str) -> str:
    return re.sub(r"(?<=[a-z)])(?=[A-Z])", " ", name)


def with_old_names(schemas: Mapping[str, EndpointSchema]) -> dict[str, EndpointSchema]:
    """The schemas, also reading the v1/v2 field names of :data:`OLD_NAMES`.

    ``getSeriesMetadata`` also reads each column's name split into words (``Series Date``),
    and is listed under v1's spelling ``getSeriesMetaData`` too.
    """
    out = dict(schemas)
    for endpoint, renames in OLD_NAMES.items():
        schema = schemas[endpoint]
        extra = dict(renames)
        if endpoint == "getSeriesMetadata":
            extra = {_spaced(name): name for name in schema.columns} | extra
        out[endpoint] = EndpointSchema(schema.columns, {**extra, **schema.renames})
    out["getSeriesMetaData"] = out["getSeriesMetadata"]
    return out


def parse_dates(values: pd.Series) -> pd.Series:
    """Parse NBIA date strings of any style into ``datetime64[ns]``; blanks become NaT.

    Parameters
    ----------
    values : pandas.Series
        Strings such as ``"05-27-2015"``, ``"2015-05-27 17:12:21.0"`` or
        ``"Mon Nov 04 11:45:52 UTC 2013"``, or missing values.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.astype("datetime64[ns]")
    text = values if values.dtype == STRING_DTYPE else values.astype("string")
    codes, distinct = text.factorize()  # each distinct text parsed once; missing: code -1
    parsed = _parse_distinct(pd.Series(distinct, dtype=text.dtype))
    return pd.Series(np.append(parsed, np.datetime64("NaT"))[codes], index=values.index)


def _parse_distinct(text: pd.Series) -> np.ndarray:
    """datetime64[ns] of each date text, trying :data:`_DATE_FORMATS` in turn."""
    text = text.str.strip()
    text = text.mask(text == "")
    parsed = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[ns]")
    todo = text.notna().to_numpy(dtype=bool, copy=True)
    for fmt in _DATE_FORMATS:
        if not todo.any():
            break
        attempt = pd.to_datetime(text if todo.all() else text[todo], format=fmt, errors="coerce")
        if getattr(attempt.dt, "tz", None) is not None:
            attempt = attempt.dt.tz_localize(None)
        rows = np.flatnonzero(todo)
        parsed[rows] = attempt.to_numpy(dtype="datetime64[ns]")
        todo[rows] = np.isnat(parsed[rows])
    return parsed


def _to_int(values: pd.Series) -> pd.Series:
    if pd.api.types.is_integer_dtype(values):
        return values.astype("Int64")
    numbers = pd.to_numeric(values.replace("", None), errors="coerce")
    numbers = numbers.where(numbers.abs() < 2**63)  # beyond int64 (or infinite): missing
    return numbers.round().astype("Int64")


def _to_bool(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return values.astype("boolean")
    lookup = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    mapped = values.map(lambda v: lookup.get(str(v).strip().lower()) if pd.notna(v) else None)
    return mapped.astype("boolean")


def _to_str(values: pd.Series) -> pd.Series:
    if values.dtype == STRING_DTYPE:
        return values
    cleaned = values.map(lambda v: v if v is None or isinstance(v, str) else _scalar_text(v))
    return cleaned.astype(STRING_DTYPE)


def _scalar_text(value: Any) -> Any:
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_CONVERTERS = {
    "str": _to_str,
    "int": _to_int,
    "date": parse_dates,
    "bool": _to_bool,
    "float": lambda v: pd.to_numeric(v.replace("", None), errors="coerce").astype("Float64"),
}


def typed_value(kind: str, value: Any) -> Any:
    """One value typed as a column of ``kind`` would type it (NA or NaT where it cannot be)."""
    return _CONVERTERS[kind](pd.Series([value], dtype=object)).iloc[0]


def typed_frame(frame: pd.DataFrame, schema: EndpointSchema) -> pd.DataFrame:
    """The columns of ``schema`` in order, typed, from a frame of server keys (then any key the
    schema lacks, as text)."""
    frame = frame.rename(columns=schema.renames)
    if frame.columns.has_duplicates:  # an old and a new name for one field: keep the first
        frame = frame.loc[:, ~frame.columns.duplicated()]
    extras = [c for c in frame.columns if c not in schema.columns]
    columns = {}
    for name, kind in schema.columns.items():
        if name in frame.columns:
            columns[name] = _CONVERTERS[kind](frame[name])
        else:
            columns[name] = pd.Series(pd.NA, index=frame.index).astype(_DTYPES[kind])
    for name in extras:
        columns[name] = _to_str(frame[name])
    return pd.DataFrame(columns, index=pd.RangeIndex(len(frame)), copy=False)


def frame_from_records(
    records: Iterable[Mapping[str, Any] | str], schema: EndpointSchema
) -> pd.DataFrame:
    """A typed DataFrame from JSON rows (dicts with dropped null keys, or bare values).

    A bare value (some endpoints answer ``["CT", "MR"]``) fills the first column.
    """
    raw = raw_frame(records, schema)
    del records  # the row dicts go before typing, unless the caller holds them
    return typed_frame(raw, schema)


def raw_frame(records: Iterable[Mapping[str, Any] | str], schema: EndpointSchema) -> pd.DataFrame:
    """JSON rows as an untyped frame of the server's keys (see :func:`frame_from_records`)."""
    rows = [r if isinstance(r, dict) else {schema.names[0]: r} for r in records]
    # pd.DataFrame keeps rows whose keys were all dropped ([{}]); from_records loses them
    return pd.DataFrame(rows) if rows else pd.DataFrame()


def records_from_csv(text: str, schema: EndpointSchema) -> list[dict[str, Any]]:
    """The rows of NBIA CSV as text, under the schema's column names, blanks as None: what
    :func:`frame_from_csv` reads before typing, with no frame built. A text the ``csv`` module
    will not read (a field over its size limit, a quote left open) is read as
    :func:`frame_from_csv` reads it, typed."""
    import csv
    import io

    try:
        rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff")), strict=True))
    except csv.Error:
        return frame_from_csv(text, schema).to_dict("records")
    header = [schema.renames.get(key, key) for key in (rows[0] if rows else [])]
    records = []
    for row in rows[1:]:
        if row:
            record: dict[str, Any] = {}
            for key, value in zip(header, row, strict=False):
                record.setdefault(key, value or None)  # two spellings of a column: the first
            records.append(record)
    return records


def frame_from_csv(text: str, schema: EndpointSchema) -> pd.DataFrame:
    """A typed DataFrame from NBIA CSV (quoted or not); an empty text gives the empty frame."""
    import io

    if not text.strip():
        return typed_frame(pd.DataFrame(), schema)
    raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    return typed_frame(raw.replace("", None), schema)

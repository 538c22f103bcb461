"""The sample archive in the dialects of older and other NBIA servers.

A :class:`ServerFlavour` serves the same v4 data and only changes what the dialect changes: the
base path, endpoint names, how query dates are written, field names, date styles and the
credentials asked for. So every flavour of the archive holds provably the same data.

This table is written from the server's side (what each dialect sends and accepts), apart from
the client's :mod:`intake_tcia.nbia.flavours`, so tests of the client against it check that table.
It is stricter than the real old servers in one way: an unknown parameter is a 400 here too
(NBIA v1/v2 ignore them), so a client that sends the wrong parameter notices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from ._endpoints import ENDPOINTS, ApiError, Endpoint, HostView, get_series_metadata
from .builder import SERIES_COLUMNS

__all__ = ["ServerFlavour", "SERVER_FLAVOURS", "TOKEN_PATH", "CART_ENDPOINT", "cart_endpoint"]

TOKEN_PATH = "/nbia-api/oauth/token"
CART_ENDPOINT = "getContentsByName"
V4_DATE = "%m-%d-%Y"
_TIMESTAMP = "%Y-%m-%d %H:%M:%S.0"  # java.sql.Timestamp.toString(), "2015-05-27 00:00:00.0"
_JAVA_DATE = "%a %b %d %H:%M:%S UTC %Y"  # java.util.Date.toString()
_DATE_COLUMNS = ("SeriesDate", "StudyDate", "MaxSubmissionTimestamp", "DateReleased")
_OLD_SERIES_KEYS = {"MaxSubmissionTimestamp": "TimeStamp", "DataDescriptionURI": "CollectionURI"}
# v1/v2 getSeriesMetaData: spaced keys (other fields keep their v4 names split into words).
_OLD_METADATA_KEYS = {
    "SeriesInstanceUID": "Series UID", "StudyInstanceUID": "Study UID", "PatientID": "Subject ID",
    "ImageCount": "Number of Images", "FileSize": "File Size", "SeriesNumber": "Series Number",
    "DataDescriptionURI": "Data Description URI", "LicenseName": "License Name",
    "LicenseURI": "License URL", "StudyDate": "Study Date", "StudyDesc": "Study Description",
    "SeriesDescription": "Series Description", "ThirdPartyAnalysis": "3rd Party Analysis",
    "DateReleased": "Date Released", "Collection": "Collection", "Modality": "Modality",
    "Manufacturer": "Manufacturer", "BodyPartExamined": "Body Part Examined",
    "SeriesDate": "Series Date", "ManufacturerModelName": "Manufacturer Model Name",
    "MaxSubmissionTimestamp": "TimeStamp",
}


@dataclass(frozen=True)
class ServerFlavour:
    """How the sample archive answers in one dialect.

    Attributes
    ----------
    name : str
        ``"v4"``, ``"token"``, ``"v1"``, ``"v2"`` or ``"legacy"``.
    api_path : str
        The base path of the API.
    auth : {"none", "token", "api_key"}
        The credentials every API request must carry (401 otherwise).
    names : dict of str to str
        v4 endpoint -> the name this dialect serves it under.
    date_params : dict of str to (str, str)
        v4 endpoint -> (the parameter carrying its date, its ``strptime`` format).
    old_names : bool
        v1 field names and Timestamp dates in answers, getSeriesMetaData as a GET of one series
        (JSON, spaced keys, numbers as strings), and getImage without MD5s.
    default_format : str
        The answer format when a request names none.
    cart_path : str
        Where ``getContentsByName`` is served (v1 on every NBIA host).
    """

    name: str
    api_path: str
    auth: str = "none"
    names: Mapping[str, str] = field(default_factory=dict)
    date_params: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    old_names: bool = False
    default_format: str = "json"
    cart_path: str = "/nbia-api/services/v1/getContentsByName"

    def endpoints(self) -> dict[str, Endpoint]:
        """The endpoints served under :attr:`api_path`, by served name (carts aside)."""
        served = {self.names.get(name, name): e for name, e in ENDPOINTS.items()}
        if self.old_names:
            served["getSeriesMetaData"] = Endpoint(
                "getSeriesMetaData", ("SeriesInstanceUID", "format"), ("SeriesInstanceUID",),
                query=lambda v, p: get_series_metadata(v, {"list": p["SeriesInstanceUID"]}),
            )
            del served["getSeriesMetadata"]
        return served

    def v4_params(self, endpoint: str, params: dict[str, str]) -> dict[str, str]:
        """The request's parameters as the v4 query functions take them (dates as MM-DD-YYYY).

        Raises
        ------
        ApiError
            400 for a date not in this dialect's format.
        """
        params = dict(params)
        if self.old_names and endpoint == "getImage":
            params.pop("IncludeMD5", None)  # v1/v2 getImage knows no MD5s
        if endpoint in self.date_params:
            name, fmt = self.date_params[endpoint]
            if name in params:
                try:
                    when = datetime.strptime(params.pop(name), fmt)
                except ValueError:
                    raise ApiError(400, f"Invalid date for {name}; expected {fmt}") from None
                params["fromDate"] = when.strftime(V4_DATE)
        return params

    def render(self, endpoint: str, frame: pd.DataFrame) -> pd.DataFrame:
        """A v4 answer in this dialect (shared carts are v1 everywhere)."""
        if endpoint == "getSeriesMetaData":
            return _old_metadata(frame)
        if not (self.old_names or endpoint == CART_ENDPOINT):
            return frame
        frame = _restyle_dates(frame, {c: _TIMESTAMP for c in _DATE_COLUMNS})
        return frame.rename(columns=_OLD_SERIES_KEYS)


def _restyle_dates(frame: pd.DataFrame, styles: Mapping[str, str]) -> pd.DataFrame:
    changed = {
        column: pd.to_datetime(frame[column], format=V4_DATE, errors="coerce").dt.strftime(fmt)
        for column, fmt in styles.items()
        if column in frame.columns
    }
    return frame.assign(**changed) if changed else frame


def _old_metadata(frame: pd.DataFrame) -> pd.DataFrame:
    """v4 getSeriesMetadata rows as v1 getSeriesMetaData renders them."""
    styles = dict.fromkeys(_DATE_COLUMNS, _TIMESTAMP)
    styles.update(StudyDate=V4_DATE, DateReleased=_JAVA_DATE)
    frame = _restyle_dates(frame, styles)
    as_text = {"ImageCount": "{:.0f}", "FileSize": "{:.0f}", "SeriesNumber": "{:f}"}
    frame = frame.assign(**{
        column: frame[column].map(lambda v, f=f: None if pd.isna(v) else f.format(float(v)))
        for column, f in as_text.items()
        if column in frame.columns
    })
    return frame.rename(columns=_OLD_METADATA_KEYS)


_V1_NAMES = {
    "NewPatientsInCollection": "getNewPatientsInCollection",
    "NewStudiesInPatientCollection": "getNewStudiesInPatientCollection",
}
_V1_DATES = {
    "getUpdatedSeries": ("fromDate", "%d/%m/%Y"),
    "NewPatientsInCollection": ("Date", "%Y/%m/%d"),
    "NewStudiesInPatientCollection": ("Date", "%Y/%m/%d"),
}

#: Every dialect the sample archive speaks, by name.
SERVER_FLAVOURS: dict[str, ServerFlavour] = {
    f.name: f
    for f in (
        ServerFlavour("v4", "/nbia-api/services/v4/"),
        ServerFlavour("token", "/nbia-api/services/v4/", auth="token"),
        ServerFlavour("v1", "/nbia-api/services/v1/", names=_V1_NAMES, date_params=_V1_DATES,
                      old_names=True),
        ServerFlavour("v2", "/nbia-api/services/v2/", auth="token", names=_V1_NAMES,
                      date_params=_V1_DATES, old_names=True,
                      cart_path="/nbia-api/services/v2/getContentsByName"),
        ServerFlavour(
            "legacy", "/services/v4/TCIA/query/", auth="api_key",
            names={"getPatientByCollectionAndModality": "PatientsByModality"},
            date_params={
                "getUpdatedSeries": ("fromDate", "%d/%m/%Y"),
                "NewPatientsInCollection": ("Date", "%Y-%m-%d"),
                "NewStudiesInPatientCollection": ("Date", "%Y-%m-%d"),
            },
            old_names=True, default_format="csv",
            cart_path="/services/v4/TCIA/query/ContentsByName",
        ),
    )
}


def cart_endpoint(carts: Mapping[str, list[str]]) -> Endpoint:
    """getContentsByName over ``carts`` (name -> SeriesInstanceUIDs): getSeries rows."""

    def query(view: HostView, params: dict[str, str]) -> pd.DataFrame:
        uids = carts.get(params["name"], [])
        rows = view.table[view.table["SeriesInstanceUID"].isin(uids)]
        return rows.loc[:, list(SERIES_COLUMNS)].reset_index(drop=True)

    return Endpoint(CART_ENDPOINT, ("name", "format"), ("name",), query=query)

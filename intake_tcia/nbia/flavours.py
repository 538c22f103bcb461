"""The dialects of the NBIA API a client may meet, in one table.

The client always speaks NBIA v4 (endpoint names, parameters, ``MM-DD-YYYY`` query dates) and
always hands back v4-named, typed DataFrames. A :class:`Flavour` says how one server differs:

========  ==================================================  ==================================
flavour   base URL                                            differences from v4
========  ==================================================  ==================================
``v4``    ``.../nbia-api/services/v4/``                       none (shared carts live under /v1/)
``token`` ``.../nbia-api/services/v4/`` of a deployment       a Bearer token (OAuth password
          that wants a login                                  grant on ``.../nbia-api/oauth/token``)
``v1``    ``.../nbia-api/services/v1/``                       old field names (``TimeStamp``,
                                                              ``CollectionURI``; getSeriesMetaData:
                                                              ``Series UID``, ``Subject ID``, ...),
                                                              Timestamp dates, query dates
                                                              ``dd/MM/yyyy`` (fromDate) and
                                                              ``yyyy/MM/dd`` (``Date``),
                                                              getNew* endpoint names, zips from
                                                              getImageWithMD5Hash
``v2``    ``.../nbia-api/services/v2/``                       as v1, behind a Bearer token
``legacy``  ``.../services/v4/TCIA/query/`` (Bindaas,         the ``api_key`` header,
          deprecated 2022)                                    ``format=json`` asked explicitly,
                                                              ``PatientsByModality``,
                                                              ``ContentsByName``, ``Date`` as
                                                              ``yyyy-MM-dd``
========  ==================================================  ==================================

Sources: the v1 rows are NBIA's own code (CBIIT/NBIA-TCIA ``V1_get*.java``: ``getNew*`` paths,
the ``Date`` parameter, getImage without MD5s) and published v1/v2 answers. The legacy row comes
from TCIA's Bindaas guides and the clients written against it (TCIA-API-SDK:
``/query/<endpoint>``, ``api_key`` header, ``ContentsByName``). No legacy answer body has been
published: its field names, date styles, getSeriesMetaData and MD5 zips are **assumed** to follow
the v1/v2 conventions.

The flavour of a host is read from its base URL (``/v1/``, ``/v2/``, ``/v4/``, ``/TCIA/query/``)
unless ``Settings.api_version`` (``INTAKE_TCIA_API_VERSION``) names one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import urljoin

from ..schema import SCHEMAS, EndpointSchema, with_old_names

__all__ = ["Flavour", "Route", "FLAVOURS", "flavour_for", "detect_flavour", "QUERY_DATE_FORMAT"]

#: How the client writes query dates (the v4 style) before a flavour rewrites them.
QUERY_DATE_FORMAT = "%m-%d-%Y"
#: Endpoints that answer zips or DICOM, which take no ``format``.
IMAGE_ENDPOINTS = frozenset({"getImage", "getImageWithMD5Hash", "getSingleImage"})


@dataclass(frozen=True)
class Route:
    """How one v4 request is asked of a server of another flavour.

    Attributes
    ----------
    path : str
        The endpoint's path, relative to the base URL (``urljoin``: ``"../v1/getContentsByName"``
        leaves ``/v4/``).
    params : dict of str to str or None
        v4 parameter name -> this server's name; None drops the parameter.
    date_format : str, optional
        ``strftime`` format of the date parameters (``fromDate`` in v4).
    """

    path: str
    params: Mapping[str, str | None] = field(default_factory=dict)
    date_format: str | None = None


@dataclass(frozen=True)
class Flavour:
    """One dialect of the NBIA API (see the module docstring for the table).

    Attributes
    ----------
    name : str
        ``"v4"``, ``"token"``, ``"v1"``, ``"v2"`` or ``"legacy"``.
    auth : {"none", "token", "api_key"}
        What the server wants with each request.
    routes : dict of str to Route
        v4 endpoint -> how this server is asked; endpoints not listed are asked as in v4.
    query_params : dict of str to str
        Sent with every query (not with image requests), e.g. ``format=json``.
    old_names : bool
        Answers use v1/v2 field names and date styles (mapped back by :mod:`intake_tcia.schema`).
    metadata_per_series : bool
        Series metadata come from ``getSeriesMetaData?SeriesInstanceUID=`` (JSON, one series a
        request) instead of v4's POST of a UID list (quoted CSV).
    """

    name: str
    auth: str = "none"
    routes: Mapping[str, Route] = field(default_factory=dict)
    query_params: Mapping[str, str] = field(default_factory=dict)
    old_names: bool = False
    metadata_per_series: bool = False
    schemas: Mapping[str, EndpointSchema] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schemas = with_old_names(SCHEMAS) if self.old_names else SCHEMAS
        object.__setattr__(self, "schemas", MappingProxyType(schemas))

    def request(
        self, url: str, params: Mapping[str, Any] | None
    ) -> tuple[str, Mapping[str, Any] | None]:
        """The URL and parameters to send for a v4-style request ``base + endpoint``."""
        base, _, endpoint = url.rpartition("/")
        route = self.routes.get(endpoint)
        if route is None and not self.query_params:
            return url, params
        if self.query_params and endpoint not in IMAGE_ENDPOINTS:
            params = {**(params or {}), **self.query_params}
        if route is None:
            return url, params
        sent = {}
        for name, value in (params or {}).items():
            renamed = route.params.get(name, name)
            if renamed is None:
                continue
            if name == "fromDate" and route.date_format:
                value = datetime.strptime(value, QUERY_DATE_FORMAT).strftime(route.date_format)
            sent[renamed] = value
        return urljoin(base + "/", route.path), sent


_CART_V1 = Route("../v1/getContentsByName")
_NO_MD5_PARAMS: Mapping[str, str | None] = {"NewFileNames": None, "IncludeMD5": None}
_V1_ROUTES = {
    "getUpdatedSeries": Route("getUpdatedSeries", date_format="%d/%m/%Y"),
    "NewPatientsInCollection": Route(
        "getNewPatientsInCollection", {"fromDate": "Date"}, "%Y/%m/%d"
    ),
    "NewStudiesInPatientCollection": Route(
        "getNewStudiesInPatientCollection", {"fromDate": "Date"}, "%Y/%m/%d"
    ),
    # v1/v2 getImage ignores IncludeMD5; the MD5s come with getImageWithMD5Hash (no LICENSE).
    "getImage": Route("getImageWithMD5Hash", _NO_MD5_PARAMS),
}
_LEGACY_ROUTES = {
    **_V1_ROUTES,
    "NewPatientsInCollection": Route("NewPatientsInCollection", {"fromDate": "Date"}, "%Y-%m-%d"),
    "NewStudiesInPatientCollection": Route(
        "NewStudiesInPatientCollection", {"fromDate": "Date"}, "%Y-%m-%d"
    ),
    "getPatientByCollectionAndModality": Route("PatientsByModality"),
    "getContentsByName": Route("ContentsByName"),
}

#: Every flavour, by name.
FLAVOURS: dict[str, Flavour] = {
    f.name: f
    for f in (
        Flavour("v4", routes={"getContentsByName": _CART_V1}),
        Flavour("token", auth="token", routes={"getContentsByName": _CART_V1}),
        Flavour("v1", routes=_V1_ROUTES, old_names=True, metadata_per_series=True),
        Flavour("v2", auth="token", routes=_V1_ROUTES, old_names=True, metadata_per_series=True),
        Flavour(
            "legacy",
            auth="api_key",
            routes=_LEGACY_ROUTES,
            query_params={"format": "json"},
            old_names=True,
            metadata_per_series=True,
        ),
    )
}

_VERSION_IN_URL = re.compile(r"/services/(v[124])/")


def detect_flavour(base_url: str) -> str:
    """str: the flavour a base URL names (``/TCIA/query/`` legacy, ``/v1/``, ``/v2/``, else v4)."""
    if "/TCIA/query/" in base_url:
        return "legacy"
    found = _VERSION_IN_URL.search(base_url)
    return found.group(1) if found else "v4"


def flavour_for(base_url: str, api_version: str | None = None) -> Flavour:
    """The :class:`Flavour` of a host: ``api_version`` when given, else read from its URL.

    Raises
    ------
    ValueError
        For an unknown ``api_version``.
    """
    name = api_version or detect_flavour(base_url)
    try:
        return FLAVOURS[name]
    except KeyError:
        raise ValueError(
            f"api_version must be one of {', '.join(FLAVOURS)}, not {api_version!r}"
        ) from None

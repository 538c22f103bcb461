"""intake (V1) drivers: TCIA queries as DataFrames, series as lazy DICOM, and a browsable catalog.

Three drivers are registered through the ``intake.drivers`` entry point, so that YAML catalogs
name them and ``intake.open_tcia_query``, ``intake.open_tcia_series`` and ``intake.open_tcia_cat``
exist:

``tcia_query`` (:class:`TCIAQuerySource`)
    Any query endpoint of :class:`~intake_tcia.client.TCIAClient` as a ``dataframe`` source.
``tcia_series`` (:class:`TCIASeriesSource`)
    One series: ``discover()`` from metadata, ``read()`` as spatially sorted pydicom datasets,
    ``to_dask()`` / ``to_xarray()`` as a ``(z, y, x)`` volume.
``tcia_cat`` (:class:`TCIACatalog`)
    The archive as nested catalogs, Collection -> Patient -> Study -> Series, each level listed
    by one query when first looked into.

Every driver takes the client's keywords (``api_url``, ``nlst_api_url``, ``cache_dir``,
``timeout``, ``retries``, ``workers``, and any other :class:`~intake_tcia.config.Settings`
field), each defaulting to its ``INTAKE_TCIA_*`` environment variable, so a YAML catalog need
not name a host. Sources with the same settings share one client (connection pool and host
routing) in a process. All HTTP goes through that client, all series data through its cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from inspect import signature
from typing import Any

import pandas as pd
from intake.source.base import DataSource, Schema

from . import __version__
from ._catalog import TCIACatalog
from ._client_source import _ClientSource, shared_client  # noqa: F401 - its public home
from ._series_source import TCIASeriesSource
from .client import TCIAClient
from .errors import import_optional

__all__ = ["ENDPOINTS", "TCIACatalog", "TCIAQuerySource", "TCIASeriesSource"]

#: Query endpoints of ``tcia_query``: name (a TCIAClient method, or the NBIA endpoint it asks)
#: -> (TCIAClient method, parameters it always gets).
ENDPOINTS: dict[str, tuple[str, dict[str, str]]] = {
    **{
        name: (name, {})
        for name in (
            "collections", "modalities", "body_parts", "manufacturers", "patients",
            "patients_by_modality", "new_patients", "studies", "new_studies", "series",
            "updated_series", "series_metadata", "dicom_tags", "value_counts", "shared_cart",
            "search", "collection_descriptions", "series_for_doi",
        )
    },
    "getContentsByName": ("shared_cart", {}),
    "getCollectionValues": ("collections", {}),
    "getModalityValues": ("modalities", {}),
    "getBodyPartValues": ("body_parts", {}),
    "getManufacturerValues": ("manufacturers", {}),
    "getPatient": ("patients", {}),
    "getPatientByCollectionAndModality": ("patients_by_modality", {}),
    "NewPatientsInCollection": ("new_patients", {}),
    "getPatientStudy": ("studies", {}),
    "NewStudiesInPatientCollection": ("new_studies", {}),
    "getSeries": ("series", {}),
    "getUpdatedSeries": ("updated_series", {}),
    "getSeriesMetadata": ("series_metadata", {}),
    "getDicomTags": ("dicom_tags", {}),
    "getSimpleSearch": ("search", {}),
    "getCollectionDescriptions": ("collection_descriptions", {}),
    "getCollectionValuesAndCounts": ("value_counts", {"of": "collection"}),
    "getModalityValuesAndCounts": ("value_counts", {"of": "modality"}),
    "getBodyPartValuesAndCounts": ("value_counts", {"of": "body_part"}),
    "getManufacturerValuesAndCounts": ("value_counts", {"of": "manufacturer"}),
}

# -- tcia_query -----------------------------------------------------------------------------------


class TCIAQuerySource(_ClientSource, DataSource):
    """One TCIA query endpoint as a pandas DataFrame.

    Parameters
    ----------
    endpoint : str
        A key of :data:`ENDPOINTS`: a :class:`~intake_tcia.client.TCIAClient` query method
        (``"series"``, ``"patients"``, ``"value_counts"``, ...) or the NBIA endpoint it asks
        (``"getSeries"``, ...).
    parameters : dict, optional
        Keywords of that method, e.g. ``{"collection": "LIDC-IDRI", "modality": "CT"}``.
        ``None`` and empty strings count as not given, so an unset catalog user parameter
        (default ``""``) drops its filter.
    metadata : dict, optional
        Extra metadata (catalog entries pass their own).
    **client_options
        Client keywords (``api_url``, ``nlst_api_url``, ``cache_dir``, ``timeout``, ...),
        defaulting to the ``INTAKE_TCIA_*`` environment variables.

    Raises
    ------
    ValueError
        For an unknown endpoint.
    TypeError
        For a parameter the endpoint does not take, or an unknown client keyword.

    Examples
    --------
    >>> src = TCIAQuerySource("series", {"collection": "LIDC-IDRI", "modality": "CT"})
    >>> src.read()                                          # doctest: +SKIP
    """

    name = "tcia_query"
    container = "dataframe"
    version = __version__
    partition_access = True

    def __init__(
        self,
        endpoint: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        **client_options: Any,
    ) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(
                f"unknown endpoint {endpoint!r}; choose one of {', '.join(sorted(ENDPOINTS))}"
            )
        method, fixed = ENDPOINTS[endpoint]
        given = {k: v for k, v in (parameters or {}).items() if v not in (None, "", [])}
        self.endpoint = endpoint
        self.parameters = {**given, **fixed}
        # Unknown names fail now; a required one still missing (a catalog entry opened with its
        # empty defaults) fails when read.
        signature(getattr(TCIAClient, method)).bind_partial(None, **self.parameters)
        self._method = method
        self._set_client_options(client_options)
        self._frame: pd.DataFrame | None = None
        super().__init__(metadata=metadata)

    def __repr__(self) -> str:
        given = "".join(f", {k}={v!r}" for k, v in self.parameters.items())
        return f"TCIAQuerySource({self.endpoint!r}{given})"

    def _query(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = getattr(self.client, self._method)(**self.parameters)
        return self._frame

    def _get_schema(self) -> Schema:
        frame = self._query()
        return Schema(
            datashape=None,
            dtype={name: str(dtype) for name, dtype in frame.dtypes.items()},
            shape=frame.shape,
            npartitions=1,
            extra_metadata={"endpoint": self.endpoint, "parameters": dict(self.parameters)},
        )

    def _get_partition(self, i: int) -> pd.DataFrame:
        return self._query()

    def read(self) -> pd.DataFrame:
        """The query's answer (asked once; :meth:`close` forgets it).

        Returns
        -------
        pandas.DataFrame
            The endpoint's fixed columns and dtypes (see :mod:`intake_tcia.schema`).
        """
        self._load_metadata()
        return self._query()

    def to_dask(self) -> Any:
        """The answer as a dask DataFrame of one partition (needs the ``dask`` extra)."""
        dd = import_optional("dask.dataframe", "dask", "TCIAQuerySource.to_dask")
        return dd.from_pandas(self.read(), npartitions=1)

    def _close(self) -> None:
        self._frame = None
        self._schema = None

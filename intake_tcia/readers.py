"""intake 2 (``intake.readers``) datatypes and readers for TCIA queries and series.

Importing this module registers them with intake (entry point ``intake.imports``), so
``TCIAQuery(...).to_reader()`` and V2 catalogs (``intake.entry.Catalog``) find them. They are the
V2 faces of the ``tcia_query`` and ``tcia_series`` V1 drivers of :mod:`intake_tcia.sources`, and
go through the same shared client, cache and :mod:`intake_tcia.volume`.

============================  ===================  =================================
datatype                      reader               output
============================  ===================  =================================
:class:`TCIAQuery`            TCIAQueryReader      ``pandas:DataFrame``
:class:`TCIASeries`           TCIASeriesReader     list of ``pydicom`` datasets (sorted)
:class:`TCIASeries`           TCIASeriesToNumpy    ``numpy:ndarray`` ``(z, y, x)``
:class:`TCIASeries`           TCIASeriesToDask     ``dask.array:Array`` (lazy)
:class:`TCIASeries`           TCIASeriesToXarray   ``xarray:DataArray``
============================  ===================  =================================

Examples
--------
>>> from intake_tcia.readers import TCIAQuery
>>> reader = TCIAQuery("series", {"collection": "LIDC-IDRI"}).to_reader("pandas")
>>> reader.read()                                           # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from intake.readers.datatypes import BaseData
from intake.readers.readers import BaseReader

if TYPE_CHECKING:
    from .sources import TCIAQuerySource, TCIASeriesSource

# intake imports this module while it starts (entry point ``intake.imports``), possibly from
# within ``import intake_tcia.sources``: so sources is imported in the methods, not here.

__all__ = [
    "TCIAQuery",
    "TCIASeries",
    "TCIAQueryReader",
    "TCIASeriesReader",
    "TCIASeriesToNumpy",
    "TCIASeriesToDask",
    "TCIASeriesToXarray",
]


class TCIAQuery(BaseData):
    """A query of the TCIA (NBIA v4) API.

    Parameters
    ----------
    endpoint : str
        A key of :data:`intake_tcia.sources.ENDPOINTS` (``"series"``, ``"getSeries"``, ...).
    parameters : dict, optional
        Keywords of that query (empty strings and ``None`` are left out).
    client_options : dict, optional
        Client keywords (``api_url``, ``cache_dir``, ...); unset ones come from the
        ``INTAKE_TCIA_*`` environment variables.
    metadata : dict, optional
        Anything else to record.
    """

    structure = {"table"}

    def __init__(
        self,
        endpoint: str,
        parameters: dict[str, Any] | None = None,
        client_options: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        from .sources import ENDPOINTS

        if endpoint not in ENDPOINTS:
            raise ValueError(
                f"unknown endpoint {endpoint!r}; choose one of {', '.join(sorted(ENDPOINTS))}"
            )
        self.endpoint = endpoint
        self.parameters = parameters or {}
        self.client_options = client_options or {}
        super().__init__(metadata)

    def to_source(self) -> TCIAQuerySource:
        """The V1 source of this query."""
        from .sources import TCIAQuerySource

        return TCIAQuerySource(self.endpoint, self.parameters, **self.client_options)


class TCIASeries(BaseData):
    """One series of the TCIA archive.

    Parameters
    ----------
    series_uid : str
        The SeriesInstanceUID.
    collection : str, optional
        Its collection, when known (routes NLST series without a probe).
    client_options : dict, optional
        Client keywords (``api_url``, ``cache_dir``, ...); unset ones come from the
        ``INTAKE_TCIA_*`` environment variables.
    metadata : dict, optional
        What is known of the series (a getSeries row, say); its DOI and licence go into the
        attrs of :class:`TCIASeriesToXarray`'s output.
    """

    structure = {"array", "image"}

    def __init__(
        self,
        series_uid: str,
        collection: str | None = None,
        client_options: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.series_uid = series_uid
        self.collection = collection
        self.client_options = client_options or {}
        super().__init__(metadata)

    def to_source(self) -> TCIASeriesSource:
        """The V1 source of this series."""
        from .sources import TCIASeriesSource

        return TCIASeriesSource(
            self.series_uid,
            collection=self.collection,
            metadata=dict(self.metadata),
            **self.client_options,
        )


class TCIAQueryReader(BaseReader):
    """Reads a :class:`TCIAQuery` into a DataFrame of the endpoint's fixed columns."""

    implements = {TCIAQuery}
    imports = {"pandas"}
    output_instance = "pandas:DataFrame"

    def _read(self, data: TCIAQuery, **kwargs: Any) -> Any:
        return data.to_source().read()


class TCIASeriesReader(BaseReader):
    """Reads a :class:`TCIASeries` as pydicom datasets sorted along the slice normal."""

    implements = {TCIASeries}
    imports = {"pydicom"}
    output_instance = "builtins:list"

    def _read(self, data: TCIASeries, **kwargs: Any) -> Any:
        return data.to_source().read()


class TCIASeriesToNumpy(BaseReader):
    """Reads a :class:`TCIASeries` as a rescaled ``(z, y, x)`` numpy array.

    Keywords ``stack``, ``rtol`` and ``allow_tilt`` go to
    :func:`intake_tcia.volume.volume_from_files`.
    """

    implements = {TCIASeries}
    imports = {"pydicom", "numpy"}
    output_instance = "numpy:ndarray"

    def _read(self, data: TCIASeries, **kwargs: Any) -> Any:
        return data.to_source().volume(**kwargs).array


class TCIASeriesToDask(BaseReader):
    """Reads a :class:`TCIASeries` as a lazy ``(z, y, x)`` dask array, one chunk per slice."""

    implements = {TCIASeries}
    imports = {"pydicom", "dask"}
    output_instance = "dask.array:Array"

    def _read(self, data: TCIASeries, **kwargs: Any) -> Any:
        return data.to_source().to_dask(**kwargs)


class TCIASeriesToXarray(BaseReader):
    """Reads a :class:`TCIASeries` as an ``xarray.DataArray`` (z, y, x) in patient mm.

    Keywords: ``lazy`` (dask-backed), and ``stack``, ``rtol``, ``allow_tilt`` of
    :func:`intake_tcia.volume.volume_from_files`.
    """

    implements = {TCIASeries}
    imports = {"pydicom", "xarray"}
    output_instance = "xarray:DataArray"

    def _read(self, data: TCIASeries, **kwargs: Any) -> Any:
        return data.to_source().to_xarray(**kwargs)

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

import threading
import weakref
from collections.abc import Iterator, Mapping
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from intake.catalog import Catalog
from intake.catalog.local import LocalCatalogEntry
from intake.source.base import DataSource, Schema

from . import __version__
from ._validate import validate_uid
from .client import TCIAClient
from .config import SECRETS, Settings
from .errors import TCIAError, TCIANotFoundError, TCIAUnknownNameError, import_optional

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

_clients: weakref.WeakValueDictionary[Settings, TCIAClient] = weakref.WeakValueDictionary()
_clients_lock = threading.Lock()


def shared_client(**options: Any) -> TCIAClient:
    """The process' client for these settings (keywords, else environment), made once.

    Raises
    ------
    TypeError
        For a keyword that is not a client setting.
    """
    client = TCIAClient(**options)
    with _clients_lock:
        return _clients.setdefault(client.settings, client)


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """A listing row as YAML-friendly metadata: missing values dropped, dates as ISO text."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or (np.ndim(value) == 0 and pd.isna(value)):
            continue
        if isinstance(value, pd.Timestamp):
            value = value.date().isoformat()
        elif isinstance(value, np.generic):
            value = value.item()
        out[str(key)] = value
    return out


class _ClientSource:
    """Mixin: the client keywords of a source, and the shared client they name."""

    _client_options: dict[str, Any]

    def _set_client_options(self, options: dict[str, Any]) -> None:
        self._client_options = {k: v for k, v in options.items() if v is not None}
        # intake pickles and writes YAML from the captured keywords: keep secrets out of them
        # (copies read them from the environment).
        captured = getattr(self, "_captured_init_kwargs", {})
        self._captured_init_kwargs = {k: v for k, v in captured.items() if k not in SECRETS}
        self._client: TCIAClient | None = None
        Settings.from_env(**{k: v for k, v in self._client_options.items() if k != "timeout"})

    @property
    def client(self) -> TCIAClient:
        """TCIAClient: the client this source asks through (made on first use)."""
        if self._client is None:
            self._client = shared_client(**self._client_options)
        return self._client


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


# -- tcia_series ----------------------------------------------------------------------------------

#: Header attributes read by :meth:`TCIASeriesSource.discover`, with their value type.
_HEADER_KEYWORDS = {
    "Rows": int,
    "Columns": int,
    "BitsAllocated": int,
    "BitsStored": int,
    "PixelRepresentation": int,
    "SamplesPerPixel": int,
    "NumberOfFrames": int,
    "RescaleSlope": str,
    "RescaleIntercept": str,
}


def _header_from_tags(tags: pd.DataFrame) -> Any:
    """A header-only pydicom Dataset from getDicomTags rows (top-level image attributes)."""
    from pydicom import Dataset
    from pydicom.datadict import keyword_for_tag

    header = Dataset()
    for element, data in zip(tags["element"], tags["data"], strict=True):
        if not isinstance(element, str) or element.startswith(">") or pd.isna(data):
            continue
        try:
            keyword = keyword_for_tag(int(element.strip("()").replace(",", ""), 16))
        except ValueError:
            continue
        if keyword in _HEADER_KEYWORDS and str(data).strip():
            kind = _HEADER_KEYWORDS[keyword]
            setattr(header, keyword, kind(float(data)) if kind is int else str(data).strip())
    return header


def _voxel_dtype(header: Any) -> np.dtype | None:
    """The dtype :mod:`intake_tcia.volume` gives slices with this header (rescale included).

    None when the header cannot form a volume (no BitsAllocated, or colour samples).
    """
    from . import volume

    if "BitsAllocated" not in header or int(header.get("SamplesPerPixel") or 1) != 1:
        return None
    stored, bits = volume._stored_dtype(header)
    return volume._output_dtype(stored, bits, [volume._frame_info(header, 0, None)])


class TCIASeriesSource(_ClientSource, DataSource):
    """One TCIA series: DICOM instances fetched once into the cache, then read from disk.

    Nothing is downloaded until data is asked for: :meth:`discover` needs one metadata query
    (``getSeries``, skipped when the catalog entry already carries the listing) and the header
    of one instance from ``getDicomTags`` (or, for a cached series, from its first file, with no
    request at all). :meth:`read`, :meth:`read_partition`, :meth:`to_dask` and
    :meth:`to_xarray` fetch the whole series into the cache through
    :meth:`TCIAClient.fetch_series <intake_tcia.client.TCIAClient.fetch_series>` the first time,
    and later serve it from there, in this and any other process using the same cache.

    The container is ``"python"``: :meth:`read` gives a list of datasets and each partition is
    one instance, in slice order. :meth:`to_dask` and :meth:`to_xarray` give the voxels as a
    ``(z, y, x)`` array (rescaled; see :mod:`intake_tcia.volume`), whose ``shape`` and
    ``dtype`` :meth:`discover` predicts from the header of one instance: ``(ImageCount x
    NumberOfFrames, Rows, Columns)``, and the dtype :mod:`intake_tcia.volume` gives that
    header's rescale (None for colour images, which form no volume).

    Parameters
    ----------
    series_uid : str
        The SeriesInstanceUID.
    collection : str, optional
        Its collection, when known (routes NLST series to the NLST host without a probe).
    metadata : dict, optional
        What is already known of the series (a catalog listing's getSeries row).
    **client_options
        Client keywords (``api_url``, ``nlst_api_url``, ``cache_dir``, ``timeout``, ...),
        defaulting to the ``INTAKE_TCIA_*`` environment variables.

    Examples
    --------
    >>> uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
    >>> src = intake.open_tcia_series(uid)                  # doctest: +SKIP
    >>> src.discover()["shape"]     # (ImageCount, Rows, Columns)  # doctest: +SKIP
    >>> src.to_xarray().attrs["DOI"]                         # doctest: +SKIP
    """

    name = "tcia_series"
    container = "python"
    version = __version__
    partition_access = True

    def __init__(
        self,
        series_uid: str,
        *,
        collection: str | None = None,
        metadata: dict[str, Any] | None = None,
        **client_options: Any,
    ) -> None:
        self.series_uid = validate_uid(series_uid, "series_uid")
        self.collection = collection or None
        self._set_client_options(client_options)
        self._sorted_files: list[Path] | None = None
        super().__init__(metadata=metadata)

    def __repr__(self) -> str:
        known = self.metadata  # what the listing said, with no request
        about = " ".join(str(known[k]) for k in ("Modality", "SeriesDescription") if known.get(k))
        if known.get("ImageCount"):
            about = f"{about}, {known['ImageCount']} images".lstrip(", ")
        collection = f", collection={self.collection!r}" if self.collection else ""
        return f"TCIASeriesSource({self.series_uid!r}{collection}{': ' + about if about else ''})"

    # -- metadata -------------------------------------------------------------------------------

    def _listing(self) -> dict[str, Any]:
        """The series' getSeries row: from the metadata given, else one query (kept after)."""
        if "ImageCount" not in self.metadata:
            frame = self.client.series(series_uid=self.series_uid, collection=self.collection)
            if frame.empty:
                raise TCIANotFoundError(404, f"no series {self.series_uid}", "getSeries")
            self.metadata.update(_plain(frame.iloc[0]))
        return self.metadata

    def _header(self) -> tuple[Any, int | None]:
        """Header of one instance, and the instance count when the series is cached."""
        import pydicom

        cached = self.client.cache.get(self.series_uid)
        if cached is not None and cached.instances:
            return pydicom.dcmread(cached.files[0], stop_before_pixels=True), len(cached.files)
        tags = self.client.dicom_tags(self.series_uid)
        return _header_from_tags(tags), None

    def _get_schema(self) -> Schema:
        listing = self._listing()
        header, cached_count = self._header()
        count = cached_count if cached_count is not None else int(listing.get("ImageCount", 0))
        frames = int(header.get("NumberOfFrames") or 1)
        rows, columns = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
        dtype = _voxel_dtype(header)
        return Schema(
            datashape=None,
            dtype=None if dtype is None else dtype.str,
            shape=(count * frames, rows, columns),
            npartitions=count,
            extra_metadata=listing,
        )

    # -- data -----------------------------------------------------------------------------------

    def _files(self) -> list[Path]:
        """The cached DICOM files, fetched first if needed."""
        return self.client.fetch_series(self.series_uid, collection=self.collection).files

    def read(self) -> list[Any]:
        """Every instance, sorted by position along the slice normal (ascending).

        Returns
        -------
        list of pydicom.dataset.FileDataset
        """
        return self.client.read_series(self.series_uid, collection=self.collection)

    def _get_partition(self, i: int) -> Any:
        import pydicom

        from .volume import sort_slices_by_position

        if self._sorted_files is None:
            heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in self._files()]
            self._sorted_files = [Path(ds.filename) for ds in sort_slices_by_position(heads)]
        return pydicom.dcmread(self._sorted_files[i])

    def volume(self, *, lazy: bool = False, **options: Any) -> Any:
        """The series as a :class:`~intake_tcia.volume.Volume` (voxels, affine, spacing).

        Parameters
        ----------
        lazy : bool, default False
            Back the voxels with dask (one chunk per slice) instead of numpy.
        **options
            ``stack``, ``rtol``, ``allow_tilt`` of :func:`intake_tcia.volume.volume_from_files`.
        """
        from .volume import volume_from_files

        return volume_from_files(self._files(), lazy=lazy, **options)

    def to_dask(self, **options: Any) -> Any:
        """The voxels as a lazy dask array ``(z, y, x)``, one chunk per slice.

        The series is fetched (or found in the cache) now, as slice order and geometry come
        from the headers; pixels are decoded and rescaled only when chunks are computed.

        Parameters
        ----------
        **options
            ``stack``, ``rtol``, ``allow_tilt`` of :func:`intake_tcia.volume.volume_from_files`.
        """
        import_optional("dask.array", "dask", "TCIASeriesSource.to_dask")
        return self.volume(lazy=True, **options).array

    def to_xarray(self, *, lazy: bool = False, **options: Any) -> Any:
        """The voxels as an ``xarray.DataArray`` with dims ``(z, y, x)`` in patient mm.

        Parameters
        ----------
        lazy : bool, default False
            Back the array with dask (one chunk per slice) instead of numpy.
        **options
            ``stack``, ``rtol``, ``allow_tilt`` of :func:`intake_tcia.volume.volume_from_files`.

        Returns
        -------
        xarray.DataArray or xarray.Dataset
            attrs: Modality, UIDs, affine and spacing (from the files), Collection, DOI,
            LicenseName and LicenseURI (from the series listing). A SEG or RTSTRUCT series
            gives :meth:`segmentation`'s ``to_xarray()`` instead: a Dataset of the image it
            refers to and the masks (``**options`` then go to :meth:`segmentation`).
        """
        from .volume import to_xarray

        import_optional("xarray", "xarray", "TCIASeriesSource.to_xarray")
        listing = self._listing()
        if listing.get("Modality") in ("SEG", "RTSTRUCT"):
            if lazy:
                raise ValueError("a SEG or RTSTRUCT series reads eagerly: pass lazy=False")
            return self.segmentation(**options).to_xarray()
        attrs = {
            "Collection": listing.get("Collection", self.collection),
            "DOI": listing.get("DataDescriptionURI"),
            "LicenseName": listing.get("LicenseName"),
            "LicenseURI": listing.get("LicenseURI"),
        }
        attrs = {k: v for k, v in attrs.items() if v is not None}
        return to_xarray(self.volume(lazy=lazy, **options), attrs=attrs)

    def annotations(self) -> pd.DataFrame:
        """The SEG, RTSTRUCT and RTDOSE series that refer to this one.

        See :meth:`TCIAClient.annotations <intake_tcia.client.TCIAClient.annotations>`.
        """
        return self.client.annotations(self.series_uid, collection=self.collection)

    def segmentation(self, **options: Any) -> Any:
        """This SEG or RTSTRUCT series as masks on the image series it refers to.

        See :meth:`TCIAClient.read_segmentation
        <intake_tcia.client.TCIAClient.read_segmentation>` (``**options``: ``stack``,
        ``atol_mm``, ``threshold``, ``holes``).

        Returns
        -------
        intake_tcia.segmentation.Segmentation
        """
        return self.client.read_segmentation(self.series_uid, collection=self.collection,
                                             **options)

    def _close(self) -> None:
        self._sorted_files = None


# -- tcia_cat -------------------------------------------------------------------------------------

#: What the entries of a TCIACatalog are, by how many of collection, patient_id, study_uid it has.
_LEVELS = ("collection", "patient", "study", "series")


def _describe(level: str, meta: Mapping[str, Any]) -> str:
    """A one-line description of a listing row."""
    if level == "collection":
        return f"TCIA collection {meta['Collection']}"
    if level == "patient":
        sex = f", sex {meta['PatientSex']}" if "PatientSex" in meta else ""
        return f"patient {meta['PatientID']}{sex}"
    if level == "study":
        parts = [meta.get("StudyDate", ""), meta.get("StudyDescription", "")]
        count = meta.get("SeriesCount")
        text = " ".join(str(p) for p in parts if p) or meta["StudyInstanceUID"]
        return f"{text} ({count} series)" if count is not None else text
    parts = [meta.get("Modality", ""), meta.get("SeriesDescription", "")]
    text = " ".join(str(p) for p in parts if p) or meta["SeriesInstanceUID"]
    count = meta.get("ImageCount")
    return f"{text} ({count} images)" if count is not None else text


class _Listing(Mapping[str, LocalCatalogEntry]):
    """The entries of one :class:`TCIACatalog` level, listed by one query on first use."""

    def __init__(self, catalog: TCIACatalog) -> None:
        self._catalog = catalog
        self._rows: dict[str, dict[str, Any]] | None = None
        self._entries: dict[str, LocalCatalogEntry] = {}
        self._lock = threading.Lock()

    def _listed(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            if self._rows is None:
                frame, key = self._catalog._list_level()
                frame = frame.dropna(subset=[key]).drop_duplicates(subset=[key])
                self._rows = {str(row[key]): _plain(row) for _, row in frame.iterrows()}
            return self._rows

    def __getitem__(self, key: str) -> LocalCatalogEntry:
        if key not in self._entries:
            self._entries[key] = self._catalog._make_entry(key, self._listed()[key])
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._listed())

    def __len__(self) -> int:
        return len(self._listed())

    def __contains__(self, key: object) -> bool:
        return key in self._listed()


class TCIACatalog(_ClientSource, Catalog):
    """The archive as nested catalogs: Collection -> Patient -> Study -> Series.

    Opened with no arguments it lists collections; with ``collection`` its patients; with
    ``patient_id`` too, their studies; with ``study_uid`` too, that study's series, each a
    :class:`TCIASeriesSource`. Each level is listed by one query (``getCollectionValues``,
    ``getPatient``, ``getPatientStudy``, ``getSeries``) the first time its entries are looked
    into, never when it is opened, and nothing is downloaded. Each entry's metadata holds its
    listing row: for series the modality, dates, ImageCount, FileSize, DOI
    (DataDescriptionURI) and licence.

    Parameters
    ----------
    collection, patient_id, study_uid : str, optional
        The level to open (each needs the ones before it).
    metadata : dict, optional
        Extra metadata (catalog entries pass their listing row).
    ttl : float, default 60
        Seconds before a listing may be asked again (intake's catalog reload).
    **client_options
        Client keywords (``api_url``, ``nlst_api_url``, ``cache_dir``, ``timeout``, ...),
        defaulting to the ``INTAKE_TCIA_*`` environment variables.

    Examples
    --------
    >>> cat = intake.open_tcia_cat()                         # doctest: +SKIP
    >>> src = cat["LIDC-IDRI"]["LIDC-IDRI-0001"][study_uid][series_uid]  # doctest: +SKIP
    """

    name = "tcia_cat"
    version = __version__

    def __init__(
        self,
        collection: str | None = None,
        patient_id: str | None = None,
        study_uid: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        ttl: float = 60,
        **client_options: Any,
    ) -> None:
        given = [collection or None, patient_id or None, study_uid or None]
        for n, value in enumerate(given[1:], start=1):
            if value is not None and given[n - 1] is None:
                raise TypeError(f"{_LEVELS[n]} level needs the {_LEVELS[n - 1]} given too")
        self.collection, self.patient_id, self.study_uid = given
        self.level = _LEVELS[sum(v is not None for v in given)]
        self._set_client_options(client_options)
        name = next((v for v in reversed(given) if v is not None), "tcia")
        super().__init__(name=name, metadata=metadata, ttl=ttl)

    def _load(self) -> None:
        self._entries = _Listing(self)

    def __getitem__(self, key: Any) -> Any:
        """The entry ``key``; an unknown name raises :class:`TCIAUnknownNameError` (a
        ``KeyError``) naming the closest entries of this level."""
        try:
            return super().__getitem__(key)
        except KeyError as exc:
            if isinstance(exc, TCIAError) or not isinstance(key, str):
                raise
            if self.level == "collection":  # an IDC collection id: the entry of TCIA's name
                name = self.client._collection_name(key)
                if name != key:
                    return self[name]
            parent = _LEVELS[_LEVELS.index(self.level) - 1]
            where = "the archive" if self.level == "collection" else f"{parent} {self.name!r}"
            raise TCIAUnknownNameError(self.level, key, list(self._entries), self.name,
                                       where) from None

    def _list_level(self) -> tuple[pd.DataFrame, str]:
        """This level's listing, and the column naming its entries."""
        c = self.client
        if self.level == "collection":
            return c.collections(), "Collection"
        if self.level == "patient":
            return c.patients(self.collection), "PatientID"
        if self.level == "study":
            return c.studies(self.collection, self.patient_id), "StudyInstanceUID"
        frame = c.series(self.collection, self.patient_id, self.study_uid)
        return frame, "SeriesInstanceUID"

    def _make_entry(self, key: str, meta: dict[str, Any]) -> LocalCatalogEntry:
        """The entry of one listed child: a catalog one level down, or a series source."""
        args: dict[str, Any] = dict(self._client_options)
        if self.level == "series":
            driver: type[DataSource] = TCIASeriesSource
            args.update(series_uid=key, collection=self.collection)
        else:
            driver = TCIACatalog
            levels = [self.collection, self.patient_id, self.study_uid]
            levels[_LEVELS.index(self.level)] = key
            args.update(zip(("collection", "patient_id", "study_uid"), levels, strict=True))
            args["ttl"] = self.ttl
        secrets = {k: args.pop(k) for k in SECRETS if k in args}
        entry = _Entry(
            name=key,
            description=_describe(self.level, meta),
            driver=driver,
            args={k: v for k, v in args.items() if v is not None},
            parameters=[],
            metadata=meta,
            getenv=False,
        )
        entry._secrets = secrets
        return entry


class _Entry(LocalCatalogEntry):
    """A child entry whose secrets (the parent's ``api_key``, ``username``, ``password``) are
    passed to the source it opens but kept out of its args, so ``describe()``, ``repr``,
    ``serialize()`` and ``save()`` never show them."""

    _secrets: dict[str, Any]  # set by TCIACatalog._make_entry; a pickled copy goes without

    def _create_open_args(self, user_parameters: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        plugin, open_args = super()._create_open_args(user_parameters)
        return plugin, {**open_args, **getattr(self, "_secrets", {})}

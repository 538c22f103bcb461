"""The ``tcia_series`` intake driver, :class:`TCIASeriesSource` (imported from
:mod:`intake_tcia.sources`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from intake.source.base import DataSource, Schema

from . import __version__
from ._client_source import _ClientSource, _plain
from ._validate import validate_uid
from .errors import TCIANotFoundError, import_optional

__all__ = ["TCIASeriesSource"]

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
    from ._geometry import _frame_info
    from ._pixels import _output_dtype, _stored_dtype

    if "BitsAllocated" not in header or int(header.get("SamplesPerPixel") or 1) != 1:
        return None
    stored, bits = _stored_dtype(header)
    return _output_dtype(stored, bits, [_frame_info(header, 0, None)])


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

    # Its public home: intake writes this path as the driver of saved catalogs and hashes it.
    __module__ = "intake_tcia.sources"
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

        Lazy on backend ``"idc"``, nothing is fetched here but the heads of the series'
        objects: each chunk GETs its own object where it is computed
        (:func:`intake_tcia.bucket_volume.bucket_volume`).
        """
        from .volume import volume_from_files

        if lazy and self.client.settings.backend == "idc":
            from .bucket_volume import bucket_volume

            return bucket_volume(self.client, self.series_uid, **options)
        return volume_from_files(self._files(), lazy=lazy, **options)

    def to_dask(self, **options: Any) -> Any:
        """The voxels as a lazy dask array ``(z, y, x)``, one chunk per slice.

        The series is fetched (or found in the cache) now, as slice order and geometry come
        from the headers; pixels are decoded and rescaled only when chunks are computed. On
        backend ``"idc"`` only the heads of its objects are read now, and each chunk GETs its
        own object from the bucket when computed, on whichever dask worker computes it.

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

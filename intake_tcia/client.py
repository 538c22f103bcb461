"""TCIAClient: the archive as methods that return typed pandas DataFrames, whichever source answers.

The client is a facade. Each public method checks its arguments (before any request), then asks
its :class:`~intake_tcia.routing.Router`, which picks the backend that answers as
``settings.backend`` says: :class:`~intake_tcia.nbia.backend.NBIABackend` (the NBIA v4 API, its
hosts and dialects) or :class:`~intake_tcia.idc.backend.IDCBackend` (the IDC index and buckets).
Every answer has the endpoint's fixed schema (:mod:`intake_tcia.schema`).

Names: an empty answer to a filter that names a collection, patient, modality or body part the
archive does not have raises :class:`~intake_tcia.errors.TCIAUnknownNameError`, naming the closest
real names; the listings that check needs are asked for only then.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from ._client_queries import QueryMethods
from ._lazy import pandas as pd
from ._validate import validate_uid
from .config import Settings
from .hints import with_keyword_hints
from .idc.backend import IDCBackend
from .idc.versions import ReleaseCache, release_cache
from .manifest import as_series_uids
from .nbia.backend import NBIABackend
from .retrieval.cache import CachedSeries
from .retrieval.layouts import DEFAULT_LAYOUT
from .routing import Router

if TYPE_CHECKING:
    import pydicom

    from .idc.index import IDCIndex

__all__ = ["TCIAClient"]


class TCIAClient(QueryMethods):
    """A client of The Cancer Imaging Archive, answered by NBIA or the Imaging Data Commons.

    ``backend`` (a keyword of ``**options``, or ``INTAKE_TCIA_BACKEND``) picks the source:
    ``"nbia"``, ``"idc"`` or ``"auto"`` (see :mod:`intake_tcia.routing`).

    Parameters
    ----------
    api_url, nlst_api_url : str, optional
        Base URLs of the main and NLST hosts (default: ``INTAKE_TCIA_API_URL`` /
        ``INTAKE_TCIA_NLST_API_URL``, else TCIA's).
    cache_dir : str or Path, optional
        The series cache (default ``INTAKE_TCIA_CACHE_DIR``, else the user cache dir).
    timeout : float or (float, float), optional
        Connect and read timeouts in seconds (one number sets both).
    retries : int, optional
        Retries on 429, 5xx, and lost connections, with exponential backoff.
    workers : int, optional
        Series downloaded at once.
    session : requests.Session, optional
        A session to send requests with (proxies, certificates).
    settings : Settings, optional
        Complete settings; keywords given too override them.
    **options
        Any other :class:`~intake_tcia.config.Settings` field (``backoff_factor``, ...), among
        them ``api_version``, ``api_key``, ``username`` and ``password`` for older and other
        NBIA servers (:mod:`intake_tcia.nbia.flavours`).

    Examples
    --------
    >>> c = TCIAClient()                                   # doctest: +SKIP
    >>> c.series(collection="LIDC-IDRI", modality="CT")   # doctest: +SKIP

    An NBIA v1 server, and the legacy TCIA REST API (same DataFrames as from v4):

    >>> TCIAClient(api_url="https://services.cancerimagingarchive.net/nbia-api/services/v1/")
    ... # doctest: +SKIP
    >>> TCIAClient(api_url="https://services.cancerimagingarchive.net/services/v4/TCIA/query/",
    ...            api_key="...")                          # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        api_url: str | None = None,
        nlst_api_url: str | None = None,
        cache_dir: str | Path | None = None,
        timeout: float | tuple[float, float] | None = None,
        retries: int | None = None,
        workers: int | None = None,
        session: requests.Session | None = None,
        settings: Settings | None = None,
        **options: Any,
    ) -> None:
        given = dict(options, api_url=api_url, nlst_api_url=nlst_api_url, cache_dir=cache_dir)
        given.update(retries=retries, workers=workers)
        if timeout is not None:
            connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
            given.update(connect_timeout=connect, read_timeout=read)
        if settings is None:
            self.settings = Settings.from_env(**given)
        else:
            Settings.from_env(**given)  # rejects unknown keywords
            self.settings = settings.replace(**{k: v for k, v in given.items() if v is not None})
        # with an older idc_version, that release's copies of series are cached apart
        self.cache = release_cache(self.settings.cache_dir, self.settings.idc_version)
        nbia = NBIABackend(self.settings, session or requests.Session(), self.cache)
        self._transport = nbia.transport  # the one transport, shared by both backends
        idc = IDCBackend(self.settings, self._transport, self.cache)
        if isinstance(self.cache, ReleaseCache):
            self.cache.idc = idc
        #: Which backend answers each call (``settings.backend``), with both backends as
        #: ``router.nbia`` and ``router.idc``: what cohorts, lockfiles and IDC volumes build on.
        self.router = Router(self.settings, self.cache, nbia, idc)

    def __repr__(self) -> str:
        return f"TCIAClient(api_url={self.settings.api_url!r}, cache_dir={str(self.cache_dir)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return _client_from_settings, (self.settings,)  # secrets are left out (see Settings)

    def __enter__(self) -> TCIAClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections (and the SQL engine's connection, if one was opened)."""
        self._transport.close()
        engine = self.__dict__.get("_idc_sql_engine")
        if engine is not None:
            engine.close()

    @property
    def cache_dir(self) -> Path:
        """Path: the series cache directory."""
        return self.settings.cache_dir

    @property
    def idc_index(self) -> IDCIndex:
        """IDCIndex: the IDC index of ``settings.idc_index``, opened once per process."""
        return self.router.idc.index

    # -- a series' files ----------------------------------------------------------------------

    def series_size(self, series_uid: str, *, collection: str | None = None) -> dict[str, int]:
        """``{"TotalSizeInBytes": int, "ObjectCount": int}`` of one series (uncompressed bytes).

        ``collection``, when known, routes the request straight to the right host.
        """
        uid = validate_uid(series_uid, "series_uid")
        return self.router.series_size(uid, collection=collection)

    def sop_instance_uids(self, series_uid: str, *, collection: str | None = None) -> list[str]:
        """The SOPInstanceUIDs of one series' instances (``collection`` routes, as above); on
        IDC, read from the first bytes of each object, once (kept in the cache directory)."""
        uid = validate_uid(series_uid, "series_uid")
        return self.router.on_files(lambda b: b.instance_uids(uid, collection=collection))

    def dicom_tags(self, series_uid: str, *, collection: str | None = None) -> pd.DataFrame:
        """The DICOM header of one instance of a series: element, name, data (on IDC, read from
        the first bytes of one object)."""
        uid = validate_uid(series_uid, "series_uid")
        return self.router.on_files(lambda b: b.header(uid, collection=collection))
    def single_image(
        self, series_uid: str, sop_instance_uid: str, *, collection: str | None = None
    ) -> bytes:
        """The bytes of one DICOM instance (getSingleImage, or one GET of its IDC object), with
        no use of the series cache."""
        uid = validate_uid(series_uid, "series_uid")
        sop_uid = validate_uid(sop_instance_uid, "sop_instance_uid")
        return self.router.on_files(lambda b: b.instance(uid, sop_uid, collection=collection))

    def fetch_series(self, series_uid: str, *, collection: str | None = None) -> CachedSeries:
        """One series from the cache, else downloaded, verified and cached, from NBIA or IDC as
        ``settings.backend`` says (see :meth:`intake_tcia.routing.Router.fetch_series`)."""
        return self.router.fetch_series(series_uid, collection=collection)

    def download(
        self,
        series: Any,
        dest: str | Path,
        *,
        on_error: str = "raise",
        layout: str = DEFAULT_LAYOUT,
        workers: int | None = None,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Download series into a folder tree, verified, resuming what is already there.

        Parameters
        ----------
        series : str, list of str, pandas.DataFrame or path
            One SeriesInstanceUID, several, a DataFrame with a ``SeriesInstanceUID`` column
            (its other metadata columns, ``Collection`` above all, spare lookups), the path
            of a ``.tcia`` manifest, or the path of a ``.lock`` lockfile (:meth:`lock`):
            exactly its bytes, from whichever backend still serves them, each instance
            verified against it; nothing is placed unless every series matches
            (:class:`~intake_tcia.lockfile.LockMismatchError` names what changed).
        dest : str or Path
            The folder to fill.
        on_error : {"raise", "return"}
            After every series has been tried: raise one :class:`DownloadError` listing the
            failures (the table on its ``.results``), or return the table, failures included.
        layout : str
            Where each series goes under ``dest``, a template of series metadata fields
            (``"{SeriesInstanceUID}"`` for a flat layout). Values are made safe as folder names.
        workers : int, optional
            Series downloaded at once (default ``settings.workers``).
        progress : bool
            Show a progress bar of bytes (tqdm).

        Returns
        -------
        pandas.DataFrame
            One row per series: SeriesInstanceUID, status (``"downloaded"``, ``"cached"`` or
            ``"failed"``), path (its folder), files, bytes (DICOM bytes), error.

        Raises
        ------
        ValueError
            Before any request, for malformed UIDs (all named), an unknown ``on_error`` or a
            layout field that is not a series metadata column.
        DownloadError
            With ``on_error="raise"``, if any series failed.

        Examples
        --------
        >>> c.download(c.series(collection="LIDC-IDRI", modality="CT"), "data")  # doctest: +SKIP
        """
        from .lockfile import is_lockfile, replay

        if is_lockfile(series):  # exactly the locked bytes, or nothing
            return replay(self, series, dest, layout=layout, workers=workers, progress=progress)
        if isinstance(self.cache, ReleaseCache):  # where an older release's copies are: 1 scan
            with contextlib.suppress(ValueError, TypeError):  # malformed UIDs: named below
                self.router.prepare(as_series_uids(series))
        from .retrieval.download import download

        return download(
            self.router, series, dest, on_error=on_error, layout=layout, workers=workers,
            progress=progress,
        )

    def read_series(
        self, series_uid: str, *, collection: str | None = None
    ) -> list[pydicom.Dataset]:
        """The pydicom datasets of one series, fetched once into the cache, sorted by position
        along the slice normal (ascending): a list with a one-line repr
        (:class:`~intake_tcia.datasets.DatasetList`)."""
        import pydicom

        from .datasets import DatasetList
        from .volume import sort_slices_by_position

        series = self.fetch_series(series_uid, collection=collection)
        return DatasetList(sort_slices_by_position(pydicom.dcmread(p) for p in series.files))

    # -- cohorts -----------------------------------------------------------------------------------

    def map_series(self, func: Callable[[Any], Any], series: Any, *, client: Any = None,
                   results: str | Path | None = None, pass_files: bool = False,
                   **options: Any) -> pd.DataFrame:
        """``func`` applied to every series, each fetched, verified and read where its task runs.

        Parameters
        ----------
        func : callable
            Called with one series' :class:`~intake_tcia.volume.Volume` (``.array``,
            ``.affine``, ``.spacing``, ``.metadata``), or with ``pass_files=True`` the list of
            its file paths; its return value is the row's ``result``.
        series : str, list of str, pandas.DataFrame or path
            As :meth:`download` takes them (same errors).
        client : distributed.Client, optional
            Spread one task per series over its workers; without one, threads of this process.
        results : str or Path, optional
            A folder keeping each row as it lands (parquet, ``result`` as JSON text): a
            re-run skips the series done there (their rows come from it); the ``result``
            column is then what the JSON holds, in this run as in later ones. Read the folder
            with :func:`intake_tcia.cohort.read_results`.
        pass_files : bool
            Give ``func`` the file paths instead of a Volume.
        **options
            ``cache`` (``"worker"``: a folder per dask worker, the default with a client;
            ``"settings"``: ``cache_dir``), ``retries`` (dask's, of a task that raised
            outside ``func``; default 2: a task whose worker died is rerun by the scheduler,
            up to ``distributed.scheduler.allowed-failures`` times), ``workers`` (threads
            without a client), ``progress`` (a tqdm bar over series), ``volume_options``
            (``stack``, ``rtol``, ``allow_tilt``), ``keep`` (default True; False: each task
            removes from its cache the series it fetched once ``func`` is done, so a cohort
            larger than the workers' disks goes through).

        Returns
        -------
        pandas.DataFrame
            One row per series, in the order given: SeriesInstanceUID, status (``"done"`` or
            ``"failed"``), result, error (``"TypeName: message"``), worker (the dask worker's
            address, or ``"local"``), seconds.

        Raises
        ------
        TypeError
            ``func`` cannot be pickled for the workers of ``client`` (before any task).
        ValueError
            Malformed series, as :meth:`download` (before any task).
        """
        from .cohort import map_series

        return map_series(self, func, series, client=client, results=results,
                          pass_files=pass_files, **options)

    def annotations(self, series_uid: str, *, collection: str | None = None) -> pd.DataFrame:
        """The SEG, RTSTRUCT and RTDOSE series that refer to an image series.

        Looks among the series of the image's study (two getSeries queries) at each candidate's
        header (from the cache, else one getDicomTags request): SEG and RTSTRUCT name the image
        series they were made on; RTDOSE, which names none, counts when it shares the image's
        Frame of Reference UID.

        Returns
        -------
        pandas.DataFrame
            The getSeries columns of each annotation series, plus ``ReferencedSeriesInstanceUID``
            (``series_uid``) and ``ReferencedBy`` (``"series"`` or ``"frame of reference"``);
            empty, same columns, when nothing refers to it.

        Raises
        ------
        TCIANotFoundError
            No series ``series_uid``.
        """
        from .annotations import annotations

        return annotations(self, validate_uid(series_uid, "series_uid"), collection=collection)

    def read_segmentation(
        self, annotation_series_uid: str, *, collection: str | None = None, **options: Any
    ) -> Any:
        """A SEG or RTSTRUCT series as masks on the image series it refers to.

        Both series are fetched once into the cache (see :meth:`fetch_series`), then read by
        :func:`intake_tcia.segmentation.read_segmentation` (``**options``: ``stack``,
        ``atol_mm``, ``threshold``, ``holes``).

        Returns
        -------
        intake_tcia.segmentation.Segmentation

        Raises
        ------
        intake_tcia.segmentation.SegmentationError
            Not a SEG or RTSTRUCT series, or it names no single image series.
        """
        from .annotations import read_annotation_series

        uid = validate_uid(annotation_series_uid, "annotation_series_uid")
        return read_annotation_series(self, uid, collection=collection, **options)

    # -- decoded series ---------------------------------------------------------------------------

    def read_volume(
        self, series_uid: str, *, collection: str | None = None, lazy: bool = False,
        **options: Any,
    ) -> Any:
        """One series as a :class:`~intake_tcia.volume.Volume`, fetched once into the cache.

        ``lazy`` and ``**options`` (``stack``, ``rtol``, ``allow_tilt``) are those of
        :func:`intake_tcia.volume.volume_from_files`.
        """
        from .volume import volume_from_files

        files = self.fetch_series(series_uid, collection=collection).files
        return volume_from_files(files, lazy=lazy, **options)

    # -- IDC as itself: SQL over its tables, its supplementary indices, clinical data -------------

    def sql(self, query: str) -> pd.DataFrame:
        """The answer to one SQL ``SELECT`` over IDC's index tables, as a DataFrame (DuckDB).

        Tables go by idc-index's names: ``index`` (``idc_index.parquet``), ``collections_index``,
        ``prior_versions_index``, ``analysis_results_index``, ``version_metadata_index``, and the
        supplementary ones once fetched (:meth:`fetch_index`); whatever the backend. A query that
        would write is refused; errors are :class:`~intake_tcia.errors.TCIASQLError` (see
        :mod:`intake_tcia.idc.sql`).

        Examples
        --------
        >>> c.sql("SELECT collection_id, COUNT(*) AS n FROM index GROUP BY ALL")  # doctest: +SKIP
        """
        from .idc.sql import engine_of

        return engine_of(self).query(query)

    def indices(self) -> pd.DataFrame:
        """IDC's tables: table, rows (null when absent), columns, present, source (``"package"``,
        ``"folder"``, ``"fetched"``; null when absent)."""
        from .idc.supplementary import indices

        return indices(self.settings)

    def fetch_index(self, name: str) -> Path:
        """Fetch a supplementary index (``"sm_index"``, ...) into the cache, once, verified
        against the schema idc-index-data ships; returns its parquet file (nothing is fetched
        for a table already present). See :mod:`intake_tcia.idc.supplementary`."""
        from .idc.supplementary import fetch_index

        return fetch_index(self.settings, self._transport, name).path

    def clinical(self, collection: str, *, table: str | None = None) -> Any:
        """IDC's clinical data of a collection (given by TCIA name or IDC id).

        Returns
        -------
        dict of str to pandas.DataFrame, or pandas.DataFrame
            Each clinical table of the collection (``clinical_index`` says which), or the one
            ``table`` named; ``PatientID`` (IDC's ``dicom_patient_id``) first, only the
            collection's patients' rows. Fetched once into the cache from the bucket
            ``idc-open-metadata`` on ``idc_url`` (see :mod:`intake_tcia.idc.clinical`).
        """
        from .idc.clinical import clinical

        return clinical(self.router.idc, collection, table)

    # -- reproducible cohorts: IDC URLs, manifests, viewers, lockfiles ---------------------------

    def urls(self, series: Any, mirror: str | None = None) -> pd.DataFrame:
        """The IDC objects of series as URLs: one row per instance (ListObjectsV2 of each).

        Columns ``SeriesInstanceUID``, ``SOPInstanceUID`` (null where neither a kept listing
        nor the cache says which instance an object holds), ``s3_url`` and ``https_url`` (on
        the configured endpoint, or ``mirror``'s public one); see
        :func:`intake_tcia.idc.urls.urls`. ``mirror``: ``"aws"`` or ``"gcs"``.
        """
        from .idc.urls import check_mirror, urls

        uids = as_series_uids(series)
        return urls(self.router.idc, uids, None if mirror is None else check_mirror(mirror))

    def manifest(self, series: Any, path: str | Path, format: str = "tcia", *,
                 mirror: str | None = None) -> Path:
        """Write the series into a manifest: ``"tcia"`` (NBIA's, :func:`write_manifest`),
        ``"s5cmd"`` (``cp`` lines from IDC's bucket, one folder per series, relative to where
        ``s5cmd run`` runs) or ``"csv"`` (:meth:`urls`). Returns the path written."""
        from .idc.urls import check_mirror, write_s5cmd_manifest
        from .manifest import write_manifest

        kinds = ("tcia", "s5cmd", "csv")
        if format not in kinds:
            raise ValueError(f"format must be one of {', '.join(kinds)}, not {format!r}")
        mirror = None if mirror is None else check_mirror(mirror)
        if format == "tcia":
            return write_manifest(series, path)
        if format == "s5cmd":
            return write_s5cmd_manifest(self.router.idc, as_series_uids(series), path, mirror)
        self.urls(series, mirror).to_csv(path, index=False)
        return Path(path)

    def lock(self, series: Any, path: str | Path, *, workers: int | None = None) -> Any:
        """Pin series to their exact bytes in a lockfile (JSON, ``docs/lockfile.md``).

        Each series is fetched into the cache (or found there), verified, and locked with its
        source (IDC release and ``crdc_series_uuid``, or NBIA and the date), DOI, licence and
        the SOP Instance UID and MD5 of every instance. If any series fails, no lockfile is
        written (:class:`~intake_tcia.errors.DownloadError` names them). Replay it with
        ``download(path, dest)``. Returns the :class:`~intake_tcia.lockfile.Lockfile`.
        """
        from .lockfile import lock

        return lock(self, series, path, workers=workers)

    def viewer_url(self, uid: str) -> str:
        """IDC's viewer URL of a series or a study: Slim when the study holds slide microscopy,
        OHIF v3 otherwise (:func:`intake_tcia.idc.urls.viewer_url`); no request."""
        from .idc.urls import viewer_url

        return viewer_url(self.router.idc, validate_uid(uid, "uid"))


with_keyword_hints(TCIAClient)


def _client_from_settings(settings: Settings) -> TCIAClient:
    return TCIAClient(settings=settings.with_secrets_from_env())


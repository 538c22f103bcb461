"""IDC releases: series as an older IDC release had them (``settings.idc_version``).

IDC keeps every release's objects. ``idc_index.parquet`` lists each series as it is now, with
``series_revised_idc_version`` (the release its current objects first appeared in);
``prior_versions_index.parquet`` (shipped in ``idc-index-data``) lists the earlier copies, each
with its own ``crdc_series_uuid`` and bucket and the releases ``min_idc_version`` to
``max_idc_version`` that had it. With a release ``V`` older than the index's own:

* a series is located (:func:`series_locations`) by its current row when that row's
  ``series_revised_idc_version <= V``, else by the prior row whose versions cover ``V``; a series
  neither covers is one release ``V`` lacks, and is left out (a download of it is a
  :class:`TCIANotFoundError` naming the release);
* query answers that list series leave out those the release lacks (:func:`answer`; answers
  without a SeriesInstanceUID column, such as patients or collections, are the index's as they
  are; a series IDC has removed since is not added back);
* a series whose release-``V`` copy is not its current one is cached apart, under
  ``releases/<crdc_series_uuid>/`` of the cache (:class:`ReleaseCache`), so two releases of one
  series never mix; every other series keeps its one place in the cache.

The index's own release (:func:`index_version`) is the newest in
``version_metadata_index.parquet``, else the major version ``idc-index-data`` stamps in the
index file, else the newest ``series_revised_idc_version``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._lazy import pandas as pd
from ..errors import TCIABackendError, TCIANotFoundError
from ..retrieval.cache import SeriesCache
from .location import NotInIndexError

if TYPE_CHECKING:
    from ..config import Settings
    from .index import IDCIndex


class IDCBackend(Protocol):
    """What these functions use of :class:`~intake_tcia.idc.backend.IDCBackend`."""

    settings: Settings

    @property
    def index(self) -> IDCIndex: ...

    def find(self, series_uid: str) -> Any: ...

__all__ = [
    "PRIOR_FILE",
    "RELEASES_DIR",
    "index_version",
    "pinned",
    "series_locations",
    "answer",
    "lacking",
    "not_listed",
    "release_cache",
    "ReleaseCache",
    "study_rows",
]

#: The table of earlier copies of series, in the index folder.
PRIOR_FILE = "prior_versions_index.parquet"
#: Where, under the cache root, series whose older copy was asked for are kept.
RELEASES_DIR = "releases"
_VERSIONS_FILE = "version_metadata_index.parquet"
_PRIOR_COLUMNS = ["SeriesInstanceUID", "collection_id", "aws_bucket", "crdc_series_uuid",
                  "series_aws_url", "series_size_MB", "min_idc_version", "max_idc_version"]

_VERSIONS: dict[tuple[str, str], int] = {}
_VERSIONS_LOCK = threading.Lock()


def index_version(index: IDCIndex) -> int:
    """int: the IDC release the index folder describes (see the module docstring)."""
    key = (str(index.folder), index._fingerprint)
    with _VERSIONS_LOCK:
        if key in _VERSIONS:
            return _VERSIONS[key]
    version = _read_version(index)
    with _VERSIONS_LOCK:
        _VERSIONS[key] = version
    return version


def _read_version(index: IDCIndex) -> int:
    path = index.folder / _VERSIONS_FILE
    if path.is_file():
        column = index.pq.read_table(path, columns=["idc_version"])["idc_version"]
        newest = index.pc.max(column).as_py()
        if newest is not None:
            return int(newest)
    stamp = (index.pq.read_schema(index.path).metadata or {}).get(b"idc_index_data_version")
    if stamp and stamp.split(b".")[0].isdigit():
        return int(stamp.split(b".")[0])
    column = index._dataset.to_table(columns=["series_revised_idc_version"])
    return int(index.pc.max(column["series_revised_idc_version"]).as_py() or 0)


def pinned(idc: IDCBackend) -> int | None:
    """The older release the client serves, or None when it serves the index's own.

    Raises
    ------
    TCIABackendError
        ``idc_version`` is newer than the index's release, or the client's backend is
        ``"nbia"`` (NBIA serves only what it holds now).
    """
    asked = idc.settings.idc_version
    if asked is None:
        return None
    own = index_version(idc.index)
    if asked > own:
        raise TCIABackendError(
            f"idc_version {asked} is newer than the IDC index at "
            f"{str(idc.index.folder)!r}, which describes IDC release {own}: upgrade "
            "idc-index-data, or point idc_index at a newer index")
    if asked == own:
        return None
    if idc.settings.backend == "nbia":
        raise TCIABackendError(
            f"backend 'nbia' serves what NBIA holds now, not IDC release {asked}: use "
            "backend 'idc' or 'auto' with idc_version")
    return asked


def _current(index: IDCIndex, uids: list[str]) -> pd.DataFrame:
    """SeriesInstanceUID and series_revised_idc_version of the series' current rows."""
    ds = index.ds
    table = index._dataset.to_table(
        columns=["SeriesInstanceUID", "series_revised_idc_version"],
        filter=ds.field("SeriesInstanceUID").isin(uids))
    return table.to_pandas().drop_duplicates("SeriesInstanceUID")


def _prior(index: IDCIndex, uids: list[str], version: int) -> pd.DataFrame:
    """The prior_versions_index rows of the series that cover ``version`` (none if the folder
    has no such table)."""
    path = index.folder / PRIOR_FILE
    if not path.is_file():
        return pd.DataFrame(columns=_PRIOR_COLUMNS)
    ds = index.ds
    where = (ds.field("SeriesInstanceUID").isin(uids)
             & (ds.field("min_idc_version") <= version) & (ds.field("max_idc_version") >= version))
    table = ds.dataset(str(path), format="parquet").to_table(columns=_PRIOR_COLUMNS,
                                                             filter=where)
    return table.to_pandas().drop_duplicates("SeriesInstanceUID")


def series_locations(idc: IDCBackend, series_uids: Iterable[str]) -> pd.DataFrame:
    """:meth:`IDCIndex.series_locations` as the client's release had the series: the current
    row where it covers the release, else the prior copy that does (``instanceCount`` null: the
    prior table has none); the series the release lacks are left out. Two more columns:
    ``idc_version`` (the release served) and ``prior`` (True for an older copy)."""
    index = idc.index
    uids = list(dict.fromkeys(series_uids))
    frame = index.series_locations(uids)
    version = pinned(idc)
    if version is None:
        return frame.assign(idc_version=index_version(index), prior=False)
    revised = _current(index, uids).set_index("SeriesInstanceUID")["series_revised_idc_version"]
    keep = frame["SeriesInstanceUID"].map(revised).le(version).fillna(False).astype(bool)
    current = frame[keep]
    asked = [u for u in uids if u not in set(current["SeriesInstanceUID"])]
    prior = _prior(index, asked, version) if asked else pd.DataFrame(columns=_PRIOR_COLUMNS)
    older = pd.DataFrame({
        "SeriesInstanceUID": prior["SeriesInstanceUID"],
        "collection_id": prior["collection_id"],
        "Collection": [index.name_of(c) for c in prior["collection_id"]],
        "aws_bucket": prior["aws_bucket"],
        "crdc_series_uuid": prior["crdc_series_uuid"],
        "series_aws_url": prior["series_aws_url"],
        "instanceCount": pd.array([None] * len(prior), dtype="Int64"),
        "series_size_MB": pd.array(prior["series_size_MB"], dtype="Float64"),
    })
    both = pd.concat([current.assign(prior=False), older.assign(prior=True)], ignore_index=True)
    order = {u: i for i, u in enumerate(uids)}
    both = both.sort_values("SeriesInstanceUID", key=lambda s: s.map(order), ignore_index=True)
    return both.assign(idc_version=version)


def lacking(idc: IDCBackend, version: int, uids: list[str]) -> TCIANotFoundError:
    """The error for series release ``version`` does not hold."""
    shown = ", ".join(uids[:5]) + (" ..." if len(uids) > 5 else "")
    return TCIANotFoundError(
        404, f"IDC release {version} does not hold {len(uids)} series: {shown}",
        str(idc.index.folder))


def answer(idc: IDCBackend, endpoint: str, params: dict[str, str]) -> pd.DataFrame:
    """The index's answer to a query as the client's release had it: less the series that
    release lacks, plus (for getSeries and getSeriesMetadata) those it held that IDC has removed
    since; a query for one series that release lacks is a :class:`TCIANotFoundError` naming the
    release."""
    from .queries import answer as index_answer

    idc.index.refresh()
    frame = index_answer(idc.index, endpoint, dict(params))
    version = pinned(idc)
    if version is None or "SeriesInstanceUID" not in frame.columns:
        return frame
    if not frame.empty:
        uids = frame["SeriesInstanceUID"].dropna().unique().tolist()
        held = set(series_locations(idc, uids)["SeriesInstanceUID"])
        if "SeriesInstanceUID" in params and params["SeriesInstanceUID"] not in held:
            raise lacking(idc, version, [params["SeriesInstanceUID"]])
        frame = frame[frame["SeriesInstanceUID"].isin(held)].reset_index(drop=True)
    if endpoint in ("getSeries", "getSeriesMetadata"):
        frame = _with_removed(idc.index, version, frame, params)
    return frame


#: The filters a prior_versions_index row can be matched on (v4 name -> its column there).
_PRIOR_FILTERS = {"Collection": "collection_id", "PatientID": "PatientID",
                  "StudyInstanceUID": "StudyInstanceUID",
                  "SeriesInstanceUID": "SeriesInstanceUID", "Modality": "Modality"}


def _with_removed(index: IDCIndex, version: int, frame: pd.DataFrame,
                  params: dict[str, str]) -> pd.DataFrame:
    """``frame`` and a row for each series release ``version`` held that the current index no
    longer lists, matching ``params`` (what prior_versions_index holds: collection, patient,
    study, series, modality, size; the other columns null)."""
    path = index.folder / PRIOR_FILE
    if not path.is_file() or set(params) - set(_PRIOR_FILTERS):
        return frame
    ds = index.ds
    where = (ds.field("min_idc_version") <= version) & (ds.field("max_idc_version") >= version)
    for name in ("StudyInstanceUID", "SeriesInstanceUID"):
        if name in params:
            where &= ds.field(name) == params[name]
    if "Collection" in params:
        where &= ds.field("collection_id").isin(index.collection_ids(params["Collection"]))
    prior = ds.dataset(str(path), format="parquet").to_table(
        columns=["collection_id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                 "Modality", "series_size_MB"], filter=where).to_pandas()
    for name in ("PatientID", "Modality"):  # as NBIA: case-insensitive
        if name in params:
            prior = prior[prior[name].str.upper() == params[name].strip().upper()]
    listed = _current(index, prior["SeriesInstanceUID"].tolist())["SeriesInstanceUID"]
    prior = prior[~prior["SeriesInstanceUID"].isin(set(listed))]
    prior = prior.drop_duplicates("SeriesInstanceUID")
    if prior.empty:
        return frame
    rows = pd.DataFrame({c: [None] * len(prior) for c in frame.columns})
    for column in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"):
        rows[column] = prior[column].tolist()
    rows["Collection"] = [index.name_of(c) for c in prior["collection_id"]]
    if "FileSize" in rows:
        rows["FileSize"] = [None if pd.isna(mb) else round(mb * 1e6)
                            for mb in prior["series_size_MB"]]
    rows = rows.astype(frame.dtypes.to_dict())
    return pd.concat([frame, rows], ignore_index=True) if len(frame) else rows


# -- the cache ------------------------------------------------------------------------------------


class ReleaseCache(SeriesCache):
    """The series cache of a client with an ``idc_version``: when that release is older than
    the index's, a series whose copy in it is not its current one lives under
    ``releases/<crdc_series_uuid>/series/`` of the cache root; every other series where
    :class:`SeriesCache` keeps it.

    Parameters
    ----------
    root : path-like
        The cache root.

    Attributes
    ----------
    idc : IDCBackend or None
        Whose release and index locate the series (looked up once per series); set by the
        client once its IDC backend is made. Until then, series are where SeriesCache has them.
    """

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.idc: IDCBackend | None = None

    def __repr__(self) -> str:
        return f"ReleaseCache({str(self.root)!r})"

    def series_path(self, series_uid: str) -> Path:
        path = super().series_path(series_uid)
        if self.idc is None or pinned(self.idc) is None:
            return path
        where = self.idc.find(path.name)  # kept by the backend: one index scan per batch
        if where is None or where.release is None:
            return path
        return self.root / RELEASES_DIR / where.prefix.strip("/") / "series" / path.name


def release_cache(root: str | Path, idc_version: int | None) -> SeriesCache:
    """The series cache for a client: a :class:`ReleaseCache` when it names an IDC release."""
    return SeriesCache(root) if idc_version is None else ReleaseCache(root)


def not_listed(idc: IDCBackend, uids: list[str]) -> TCIANotFoundError:
    """The error for series the index, or the client's older release, does not list."""
    version = pinned(idc)
    if version is not None:
        return lacking(idc, version, uids)
    more = f" ... ({len(uids)} in all)" if len(uids) > 5 else ""
    return NotInIndexError(404, "the IDC index does not list series " + ", ".join(uids[:5])
                           + more, str(idc.index.folder))


# -- viewer ---------------------------------------------------------------------------------------


def study_rows(idc: IDCBackend, uid: str) -> tuple[str, str | None, set[str]]:
    """(StudyInstanceUID, SeriesInstanceUID or None, the study's modalities) of a series or a
    study UID, from the current index, else (for a series) the prior copies."""
    index = idc.index
    index.refresh()
    ds = index.ds
    columns = ["StudyInstanceUID", "SeriesInstanceUID", "Modality"]
    tables = [index._dataset]
    if (index.folder / PRIOR_FILE).is_file():
        tables.append(ds.dataset(str(index.folder / PRIOR_FILE), format="parquet"))
    for dataset in tables:
        hit = dataset.to_table(columns=columns, filter=(ds.field("SeriesInstanceUID") == uid)
                               | (ds.field("StudyInstanceUID") == uid)).to_pandas()
        if len(hit):
            study = str(hit["StudyInstanceUID"].iloc[0])
            series = uid if (hit["SeriesInstanceUID"] == uid).any() else None
            rows = dataset.to_table(columns=["Modality"],
                                    filter=ds.field("StudyInstanceUID") == study)
            return study, series, set(rows["Modality"].drop_null().to_pylist())
    raise TCIANotFoundError(404, f"the IDC index lists no series or study {uid}",
                            str(index.folder))

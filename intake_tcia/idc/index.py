"""The Imaging Data Commons index answering NBIA's query endpoints locally, with no request.

The index is the ``idc-index-data`` package's folder (or any folder laid out like it, such as the
one the sample archive writes): ``idc_index.parquet`` (one row per series), ``collections_index
.parquet`` (``collection_id`` -> TCIA's ``collection_name``, species, licences, DOIs) and, when
present, ``version_metadata_index.parquet`` (the date of each IDC release, for DateReleased).

Nothing is loaded whole: each question reads only the columns it needs, with its filters pushed
into the parquet scan (:mod:`pyarrow.dataset`). A question about one collection reads that
collection's rows once, already in v4 columns and types, into an Arrow file under the cache
directory (``idc-index/<fingerprint of the index files>/<collection_id>.arrow``); later
questions, from any process, memory-map it, so a collection of 600,000 series becomes a
DataFrame in tens of milliseconds.

:meth:`IDCIndex.answer` takes an NBIA endpoint and its v4 parameters and returns the DataFrame
NBIA's answer would give (:mod:`intake_tcia.schema`): TCIA collection names, ``ImageCount`` from
``instanceCount``, ``FileSize`` from ``series_size_MB``, DateReleased from the IDC release that
first held the series; what the index lacks (ProtocolName, Site, ...) is null. Names match
case-insensitively, UIDs exactly, as NBIA's. :func:`routed` is how the client chooses between
NBIA and the index (``settings.backend``).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._lazy import pandas as pd
from ..criteria import SPECIES
from ..errors import (
    TCIABackendError,
    import_optional,
)

if TYPE_CHECKING:
    import pyarrow as pa


__all__ = [
    "IDCIndex",
    "open_index",
    "default_folder",
    "INDEX_FILE",
    "COLLECTIONS_FILE",
    "VERSIONS_FILE",
    "LOCATION_COLUMNS",
]

INDEX_FILE = "idc_index.parquet"
COLLECTIONS_FILE = "collections_index.parquet"
VERSIONS_FILE = "version_metadata_index.parquet"
#: Bumped whenever the cached Arrow files change shape.
_CACHE_FORMAT = 1
#: Filters NBIA compares case-insensitively; the other filters (UIDs) match exactly.
FOLDED = ("PatientID", "Modality", "BodyPartExamined", "Manufacturer", "ManufacturerModelName")
#: The order of the rows of every answer, as NBIA sorts them.
ROW_ORDER = ["Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"]
#: idc-index-data species -> (SpeciesCode, SpeciesDescription), NBIA's codes.
_SPECIES = {
    "human": (SPECIES["human"], "Homo sapiens"),
    "mouse": (SPECIES["mouse"], "Mus musculus"),
    "canine": (SPECIES["dog"], "Canis lupus familiaris"),
}
#: Where the locations of series come from, for IDC retrieval (:meth:`IDCIndex.series_locations`).
LOCATION_COLUMNS = [
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "collection_id",
    "Collection",
    "aws_bucket",
    "crdc_series_uuid",
    "series_aws_url",
    "instanceCount",
    "series_size_MB",
]


def default_folder() -> Path:
    """Path: the installed ``idc-index-data`` package's folder (``MissingDependencyError``
    naming the ``idc`` extra if it is not installed)."""
    module = import_optional("idc_index_data", "idc", "the IDC index")
    return Path(module.IDC_INDEX_PARQUET_FILEPATH).parent


def index_fingerprint(folder: Path) -> str:
    """str: a digest of the index files' paths, sizes and modification times (the name of the
    cache folder of what is derived from this version of the index)."""
    digest = hashlib.sha256(str(_CACHE_FORMAT).encode())
    for name in (INDEX_FILE, COLLECTIONS_FILE, VERSIONS_FILE):
        path = folder / name
        if path.is_file():
            stat = path.stat()
            digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _Collection:
    """What collections_index says of one collection."""

    name: str
    species: tuple[str | None, str | None, str | None]  # SpeciesCode, SpeciesDescription, Phantom
    licences: dict[str, tuple[str | None, str | None]]  # DOI (lower case) -> name, URL


def _arrow() -> tuple[Any, ...]:
    """pyarrow and the submodules the index uses (MissingDependencyError naming the extra)."""
    return tuple(
        import_optional(name, "idc", "the IDC index")
        for name in (
            "pyarrow",
            "pyarrow.compute",
            "pyarrow.dataset",
            "pyarrow.ipc",
            "pyarrow.parquet",
        )
    )


class IDCIndex:
    """An IDC index folder, asked as NBIA is asked.

    Parameters
    ----------
    folder : path-like, optional
        Holds ``idc_index.parquet`` and ``collections_index.parquet`` (default: the installed
        ``idc-index-data`` package, :func:`default_folder`).
    cache_dir : path-like, optional
        Where per-collection Arrow copies are kept (under ``idc-index/``); none kept when omitted.

    Raises
    ------
    MissingDependencyError
        pyarrow (or, for the default folder, idc-index-data) is not installed.
    TCIABackendError
        The folder lacks one of the two files.
    """

    def __init__(self, folder: str | Path | None = None, cache_dir: str | Path | None = None):
        self.pa, self.pc, self.ds, self.ipc, self.pq = _arrow()
        self.folder = Path(folder).expanduser() if folder is not None else default_folder()
        self.path = self.folder / INDEX_FILE
        for name in (INDEX_FILE, COLLECTIONS_FILE):
            if not (self.folder / name).is_file():
                raise TCIABackendError(
                    f"the IDC index folder {str(self.folder)!r} has no {name}: set idc_index "
                    "(INTAKE_TCIA_IDC_INDEX) to a folder laid out like the idc-index-data package"
                )
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._lock = threading.RLock()
        self._tables: dict[str, pa.Table] = {}
        self._fingerprint = index_fingerprint(self.folder)

    def __repr__(self) -> str:
        return f"IDCIndex(folder={str(self.folder)!r})"

    # -- reading the index ------------------------------------------------------------------

    @cached_property
    def _dataset(self) -> Any:
        return self.ds.dataset(str(self.path), format="parquet")

    @cached_property
    def _collections(self) -> dict[str, _Collection]:
        """collection_id -> what collections_index says of it (179 rows: read whole)."""
        table = self.pq.read_table(
            self.folder / COLLECTIONS_FILE,
            columns=["collection_id", "collection_name", "species", "sources"],
        )
        out = {}
        for row in table.to_pylist():
            species = (row.get("species") or "").strip().lower()
            code, description = _SPECIES.get(species, (None, None))
            phantom = None if not species else ("YES" if species == "phantom" else "NO")
            licences = {}
            for source in row.get("sources") or ():
                licence = source.get("license") or {}
                if source.get("source_doi"):
                    licences[source["source_doi"].lower()] = (
                        licence.get("license_long_name"),
                        licence.get("license_url"),
                    )
            out[row["collection_id"]] = _Collection(
                row["collection_name"] or row["collection_id"],
                (code, description, phantom),
                licences,
            )
        return out

    @cached_property
    def _present(self) -> list[str]:
        """The collection_ids the series index holds (one dictionary-encoded column)."""
        column = self._dataset.to_table(columns=["collection_id"])["collection_id"]
        return sorted(self.pc.unique(column).drop_null().to_pylist())

    @cached_property
    def _releases(self) -> dict[int, datetime] | None:
        """IDC version -> its release date, or None when the folder has no version table."""
        path = self.folder / VERSIONS_FILE
        if not path.is_file():
            return None
        table = self.pq.read_table(path, columns=["idc_version", "version_timestamp"])
        return {
            int(v): pd.Timestamp(t).to_pydatetime()
            for v, t in zip(
                table["idc_version"].to_pylist(),
                table["version_timestamp"].to_pylist(),
                strict=True,
            )
            if v is not None and t
        }

    def name_of(self, collection_id: str) -> str:
        """str: TCIA's name of an IDC ``collection_id`` (the id itself if collections_index
        does not list it)."""
        info = self._collections.get(collection_id)
        return info.name if info else collection_id

    def collection_ids(self, name: str) -> list[str]:
        """The collection_ids TCIA's ``name`` stands for (case-insensitive; none if unknown).

        Read from collections_index (a small file), so a collection whose copy is cached costs
        no read of the series index.
        """
        wanted = name.strip().upper()
        listed = [i for i, info in self._collections.items() if info.name.upper() == wanted]
        return listed or [
            i for i in self._present if i not in self._collections and i.upper() == wanted
        ]

    # -- v4 columns from index columns --------------------------------------------------------

    def _lookup(self, values: Any, mapping: Callable[[Any], Any], kind: Any) -> Any:
        """``mapping`` applied to each distinct value once, then spread over the rows."""
        distinct = self.pc.unique(values)
        mapped = self.pa.array([mapping(v) for v in distinct.to_pylist()], type=kind)
        return self.pc.take(mapped, self.pc.index_in(values, value_set=distinct))

    def _date(self, values: Any) -> Any:
        return self.pc.strptime(values, format="%Y-%m-%d", unit="ns", error_is_null=True)

    def _integer(self, values: Any) -> Any:
        pa, pc = self.pa, self.pc
        text = pc.utf8_trim_whitespace(values)
        number = pc.match_substring_regex(text, r"^[+-]?[0-9]{1,15}(\.[0-9]*)?$")
        text = pc.if_else(number, text, pa.scalar(None, text.type))
        return pc.cast(pc.round(pc.cast(text, pa.float64())), pa.int64())

    def _released(self, versions: Any) -> Any:
        releases = self._releases or {}
        return self._lookup(versions, lambda v: releases.get(v), self.pa.timestamp("ns"))

    def _v4(self, raw: pa.Table, constants: bool = True) -> pa.Table:
        """Index rows as v4 columns (those their index columns allow), typed as
        :mod:`intake_tcia.schema` says (and ``collection_id``)."""
        pa, pc = self.pa, self.pc
        text = pa.large_string()
        have = set(raw.column_names)
        same = ["SeriesInstanceUID", "StudyInstanceUID", "Modality", "SeriesDescription",
                "BodyPartExamined", "PatientID", "PatientSex", "PatientAge", "Manufacturer",
                "ManufacturerModelName"]
        out = {name: raw[name] for name in same if name in have}
        derived: dict[str, tuple[str, Callable[[Any], Any]]] = {
            "SeriesDate": ("SeriesDate", self._date),
            "StudyDate": ("StudyDate", self._date),
            "SeriesNumber": ("SeriesNumber", self._integer),
            "StudyDesc": ("StudyDescription", lambda v: v),
            "ImageCount": ("instanceCount", lambda v: v),
            "FileSize": (
                "series_size_MB",
                lambda v: pc.cast(pc.round(pc.multiply(v, 1e6)), pa.int64()),
            ),
            "DataDescriptionURI": (
                "source_DOI",
                lambda v: pc.binary_join_element_wise(
                    pa.scalar("https://doi.org/", text), v.cast(text), pa.scalar("", text)
                ),
            ),
            "ThirdPartyAnalysis": (
                "analysis_result_id",
                lambda v: pc.if_else(pc.is_valid(v), pa.scalar("YES", text), pa.scalar(None, text)),
            ),
            "DateReleased": ("series_init_idc_version", self._released),
            "MaxSubmissionTimestamp": ("series_revised_idc_version", self._released),
        }
        for name, (source, build) in derived.items():
            if source in have:
                try:
                    out[name] = build(raw[source])
                except (pa.ArrowException, TypeError, ValueError) as exc:  # a hostile column
                    raise TCIABackendError(f"the IDC index file {self.path}: column {source} "
                                           f"holds values that are no {name} ({exc})") from exc
        if "collection_id" in have:
            ids = raw["collection_id"]
            out["collection_id"] = ids
            out["Collection"] = self._lookup(ids, self.name_of, text)
            if constants:
                info = self._collections.get
                for i, name in enumerate(("SpeciesCode", "SpeciesDescription", "Phantom")):
                    out[name] = self._lookup(
                        ids, lambda c, i=i: info(c).species[i] if info(c) else None, text
                    )
                if "source_DOI" in have:
                    out["LicenseName"], out["LicenseURI"] = self._licences(ids, raw)
        out["Authorized"] = pa.repeat(pa.scalar(1, pa.int64()), raw.num_rows)
        return pa.table(out)

    def _licences(self, ids: Any, raw: pa.Table) -> tuple[Any, Any]:
        """LicenseName and LicenseURI: the licence collections_index gives the series' DOI."""
        pa, pc = self.pa, self.pc
        key = pc.binary_join_element_wise(
            ids.cast(pa.large_string()),
            pc.utf8_lower(raw["source_DOI"]).cast(pa.large_string()),
            pa.scalar(" ", pa.large_string()),
        )

        def licence(k: str | None) -> tuple[str | None, str | None]:
            cid, _, doi = (k or "").partition(" ")
            info = self._collections.get(cid)
            return info.licences.get(doi, (None, None)) if info else (None, None)

        return tuple(
            self._lookup(key, lambda k, i=i: licence(k)[i], pa.large_string()) for i in range(2)
        )

    # -- selecting rows ----------------------------------------------------------------------

    def _where(self, params: dict[str, str]) -> Any:
        """The filter expression of the v4 parameters given (Collection aside)."""
        pc, ds = self.pc, self.ds
        expression = None
        for name, value in params.items():
            if name in FOLDED:
                term = pc.utf8_upper(ds.field(name)) == value.upper()
            elif name in ("StudyInstanceUID", "SeriesInstanceUID"):
                term = ds.field(name) == value
            else:
                continue
            expression = term if expression is None else expression & term
        return expression

    def refresh(self) -> None:
        """Forget what was read if the index files have changed since (three ``stat`` calls)."""
        fingerprint = index_fingerprint(self.folder)
        with self._lock:
            if fingerprint != self._fingerprint:
                for name in ("_dataset", "_collections", "_present", "_releases"):
                    self.__dict__.pop(name, None)
                self._tables.clear()
                self._fingerprint = fingerprint

    def _cache_root(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / "idc-index" / self._fingerprint

    def _collection_rows(self, collection_id: str) -> pa.Table:
        """One collection's rows in v4 columns; from the cached Arrow file when there, else
        read from the index batch by batch, each batch written to the copy as it comes (memory
        holds one batch, not the collection), then the copy memory-mapped."""
        with self._lock:
            if collection_id in self._tables:
                return self._tables[collection_id]
            root = self._cache_root()
            safe = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", collection_id) is not None
            path = root / f"{collection_id}.arrow" if root and safe else None
            table = self._read_cached(path) if path else None
            if (
                table is None
                and path is not None
                and self._write_cached(path, self._collection_batches(collection_id))
            ):
                table = self._read_cached(path)
            if table is None:  # no cache, or it cannot be written
                first, *rest = self._collection_batches(collection_id)
                table = self.pa.concat_tables([first, *(t.cast(first.schema) for t in rest)])
            self._tables[collection_id] = table
            return table

    def _collection_batches(self, collection_id: str) -> Iterator[pa.Table]:
        """One collection's rows in v4 columns, a batch at a time (an empty table first).

        The index is decoded a batch at a time and filtered as it comes (the real file is one
        row group); batches past the collection's last row are not read, so a collection stored
        together (as IDC sorts the file) costs only the rows up to its end.
        """
        pc = self.pc
        schema = self._dataset.schema
        yield self._v4(self.pa.schema([schema.field(c) for c in READ_COLUMNS]).empty_table())
        ids = self._dataset.to_table(columns=["collection_id"])["collection_id"]
        rows = pc.indices_nonzero(pc.fill_null(pc.equal(ids, collection_id), False))
        end = pc.max(rows).as_py() + 1 if len(rows) else 0
        del ids, rows
        seen = 0
        for batch in self.pq.ParquetFile(self.path).iter_batches(65536, columns=READ_COLUMNS):
            if seen >= end:
                break
            seen += batch.num_rows
            keep = pc.fill_null(pc.equal(batch["collection_id"], collection_id), False)
            if pc.any(keep).as_py():
                yield self._v4(self.pa.Table.from_batches([batch.filter(keep)]))

    def _read_cached(self, path: Path) -> pa.Table | None:
        try:
            return self.ipc.open_file(self.pa.memory_map(str(path))).read_all()
        except (OSError, self.pa.ArrowInvalid):
            return None

    def _write_cached(self, path: Path, tables: Iterator[pa.Table]) -> bool:
        """Write the tables (the first gives the schema) to ``path`` atomically; False (no copy
        kept) if that fails."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
            try:
                first = next(tables)
                with os.fdopen(fd, "wb") as sink, self.ipc.new_file(sink, first.schema) as out:
                    for table in tables:
                        out.write_table(table.cast(first.schema))
                os.replace(name, path)
            finally:
                if os.path.exists(name):
                    os.unlink(name)
        except OSError:
            return False
        return True

    def rows(self, params: dict[str, str], columns: Iterable[str] | None = None) -> pa.Table:
        """The series rows matching v4 filter parameters, in v4 columns, in index order.

        A ``Collection`` is read through its cached copy; without one, the index is scanned
        reading only the index columns ``columns`` (v4 names; all when None) need.
        """
        where = self._where(params)
        if "Collection" in params:
            tables = [self._collection_rows(i) for i in self.collection_ids(params["Collection"])]
            if not tables:
                return self._v4(self._dataset.schema.empty_table())
            table = self.pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            return table if where is None else table.filter(where)
        raw_columns = READ_COLUMNS if columns is None else sorted(_raw_columns(columns, params))
        raw = self._dataset.to_table(columns=raw_columns, filter=where)
        return self._v4(
            raw,
            constants=columns is None
            or bool({"SpeciesCode", "SpeciesDescription", "Phantom", "LicenseName"} & set(columns)),
        )

    def _dated(self) -> dict[int, datetime]:
        """The release date of each IDC version; TCIABackendError if the folder has none."""
        if self._releases is None:
            raise TCIABackendError(
                f"the IDC index at {str(self.folder)!r} has no {VERSIONS_FILE}, so no release "
                "dates: ask NBIA (backend='nbia') for what changed since a date"
            )
        return self._releases

    def _since(self, table: pa.Table, from_date: str, *, strict: bool) -> pa.Table:
        """Rows released after (``strict``) or on/after ``from_date`` (``MM-DD-YYYY``)."""
        self._dated()
        when = self.pa.scalar(datetime.strptime(from_date, "%m-%d-%Y"), self.pa.timestamp("ns"))
        compare = self.pc.greater if strict else self.pc.greater_equal
        return table.filter(self.pc.fill_null(compare(table["DateReleased"], when), False))

    # -- for IDC retrieval -------------------------------------------------------------------

    def series_locations(self, series_uids: Iterable[str]) -> pd.DataFrame:
        """Where each series' objects are (one scan of the index for all of them).

        Parameters
        ----------
        series_uids : iterable of str
            SeriesInstanceUIDs (validated by the caller).

        Returns
        -------
        pandas.DataFrame
            One row per series the index lists, in the order given (unknown UIDs left out):
            SeriesInstanceUID, StudyInstanceUID, collection_id, Collection, aws_bucket,
            crdc_series_uuid, series_aws_url (``s3://<bucket>/<crdc_series_uuid>/*``),
            instanceCount (Int64), series_size_MB (Float64).
        """
        uids = list(dict.fromkeys(series_uids))
        self.refresh()
        # Batch by batch, keeping only the rows asked for: reading every column of a million
        # rows whole would cost hundreds of MB on each download.
        wanted = self.pa.array(uids, self.pa.string())
        file = self.pq.ParquetFile(str(self.path), pre_buffer=False, buffer_size=1 << 20)
        batches = file.iter_batches(batch_size=1 << 16, columns=_LOCATION_READ, use_threads=False)
        raw = self.pa.Table.from_batches(
            [b.filter(self.pc.is_in(b["SeriesInstanceUID"], value_set=wanted)) for b in batches],
            schema=self._dataset.schema.empty_table().select(_LOCATION_READ).schema,
        )
        raw = raw.append_column(
            "Collection", self._lookup(raw["collection_id"], self.name_of, self.pa.large_string())
        )
        frame = raw.select(LOCATION_COLUMNS).to_pandas(types_mapper=pandas_type)
        order = {u: i for i, u in enumerate(uids)}
        frame = frame.drop_duplicates("SeriesInstanceUID")
        return frame.sort_values("SeriesInstanceUID", key=lambda s: s.map(order), ignore_index=True)


#: The index columns :meth:`IDCIndex.series_locations` reads, one at a time.
_LOCATION_READ = [
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "collection_id",
    "aws_bucket",
    "crdc_series_uuid",
    "series_aws_url",
    "instanceCount",
    "series_size_MB",
]

#: The index columns the v4 columns are made of (of 31).
READ_COLUMNS = [
    "collection_id",
    "analysis_result_id",
    "PatientID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "source_DOI",
    "PatientAge",
    "PatientSex",
    "StudyDate",
    "StudyDescription",
    "BodyPartExamined",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesDate",
    "SeriesDescription",
    "SeriesNumber",
    "instanceCount",
    "series_init_idc_version",
    "series_revised_idc_version",
    "series_size_MB",
]


def _raw_columns(columns: Iterable[str], params: dict[str, str]) -> set[str]:
    """The index columns that v4 ``columns`` and the filters of ``params`` need."""
    sources = {
        "SeriesDate": "SeriesDate",
        "StudyDate": "StudyDate",
        "StudyDesc": "StudyDescription",
        "ImageCount": "instanceCount",
        "FileSize": "series_size_MB",
        "DataDescriptionURI": "source_DOI",
        "ThirdPartyAnalysis": "analysis_result_id",
        "DateReleased": "series_init_idc_version",
        "MaxSubmissionTimestamp": "series_revised_idc_version",
        "Collection": "collection_id",
        "SpeciesCode": "collection_id",
        "SpeciesDescription": "collection_id",
        "Phantom": "collection_id",
        "LicenseName": "source_DOI",
        "LicenseURI": "source_DOI",
    }
    needed = {sources.get(c, c) for c in columns} | {
        "collection_id",
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    }
    if {"LicenseName", "LicenseURI"} & set(columns):
        needed.add("collection_id")
    return needed | {p for p in params if p in FOLDED or p.endswith("InstanceUID")}


def pandas_type(kind: Any) -> Any:
    """The nullable pandas dtype of an Arrow column type (a ``types_mapper``), None for text."""
    import pyarrow as pa

    if pa.types.is_integer(kind):
        return pd.Int64Dtype()
    if pa.types.is_boolean(kind):
        return pd.BooleanDtype()
    if pa.types.is_floating(kind):
        return pd.Float64Dtype()
    return None


@lru_cache(maxsize=8)
def open_index(folder: Path | None, cache_dir: Path | None) -> IDCIndex:
    """The :class:`IDCIndex` of a folder and cache, opened once per process."""
    return IDCIndex(folder, cache_dir)

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
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .errors import (
    MissingDependencyError,
    TCIABackendError,
    TCIAConnectionError,
    TCIANotFoundError,
    import_optional,
)
from .schema import SCHEMAS
from .search import SPECIES

if TYPE_CHECKING:
    import pyarrow as pa

    from .client import TCIAClient

__all__ = ["IDCIndex", "IDCFallbackWarning", "open_index", "routed", "default_folder",
           "INDEX_FILE", "COLLECTIONS_FILE", "VERSIONS_FILE"]

INDEX_FILE = "idc_index.parquet"
COLLECTIONS_FILE = "collections_index.parquet"
VERSIONS_FILE = "version_metadata_index.parquet"
#: Bumped whenever the cached Arrow files change shape.
_CACHE_FORMAT = 1
#: Filters NBIA compares case-insensitively; the other filters (UIDs) match exactly.
_FOLDED = ("PatientID", "Modality", "BodyPartExamined", "Manufacturer", "ManufacturerModelName")
_ORDER = ["Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"]
#: idc-index-data species -> (SpeciesCode, SpeciesDescription), NBIA's codes.
_SPECIES = {"human": (SPECIES["human"], "Homo sapiens"),
            "mouse": (SPECIES["mouse"], "Mus musculus"),
            "canine": (SPECIES["dog"], "Canis lupus familiaris")}
#: Where the locations of series come from, for IDC retrieval (:meth:`IDCIndex.series_locations`).
LOCATION_COLUMNS = ["SeriesInstanceUID", "collection_id", "Collection", "aws_bucket",
                    "crdc_series_uuid", "series_aws_url", "instanceCount", "series_size_MB"]


class IDCFallbackWarning(UserWarning):
    """``backend="auto"``: NBIA could not be reached, the IDC index answered instead."""


def default_folder() -> Path:
    """Path: the installed ``idc-index-data`` package's folder (``MissingDependencyError``
    naming the ``idc`` extra if it is not installed)."""
    module = import_optional("idc_index_data", "idc", "the IDC index")
    return Path(module.IDC_INDEX_PARQUET_FILEPATH).parent


@dataclass(frozen=True)
class _Collection:
    """What collections_index says of one collection."""

    name: str
    species: tuple[str | None, str | None, str | None]  # SpeciesCode, SpeciesDescription, Phantom
    licences: dict[str, tuple[str | None, str | None]]  # DOI (lower case) -> name, URL


def _arrow() -> tuple[Any, ...]:
    """pyarrow and the submodules the index uses (MissingDependencyError naming the extra)."""
    return tuple(import_optional(name, "idc", "the IDC index") for name in (
        "pyarrow", "pyarrow.compute", "pyarrow.dataset", "pyarrow.ipc", "pyarrow.parquet"))


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
                    "(INTAKE_TCIA_IDC_INDEX) to a folder laid out like the idc-index-data package")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._lock = threading.RLock()
        self._tables: dict[str, pa.Table] = {}
        self._fingerprint = self._stat()

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
            columns=["collection_id", "collection_name", "species", "sources"])
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
                        licence.get("license_long_name"), licence.get("license_url"))
            out[row["collection_id"]] = _Collection(
                row["collection_name"] or row["collection_id"], (code, description, phantom),
                licences)
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
        return {int(v): pd.Timestamp(t).to_pydatetime() for v, t in zip(
            table["idc_version"].to_pylist(), table["version_timestamp"].to_pylist(),
            strict=True) if v is not None and t}

    def name_of(self, collection_id: str) -> str:
        """str: TCIA's name of an IDC ``collection_id`` (the id itself if collections_index
        does not list it)."""
        info = self._collections.get(collection_id)
        return info.name if info else collection_id

    def collection_ids(self, name: str) -> list[str]:
        """The collection_ids TCIA's ``name`` stands for (case-insensitive; none if unknown)."""
        wanted = name.strip().upper()
        return [i for i in self._present if self.name_of(i).upper() == wanted]

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
        :mod:`intake_tcia.schema` says; index columns of :data:`LOCATION_COLUMNS` kept too."""
        pa, pc = self.pa, self.pc
        text = pa.large_string()
        have = set(raw.column_names)
        same = ["SeriesInstanceUID", "StudyInstanceUID", "Modality", "SeriesDescription",
                "BodyPartExamined", "PatientID", "PatientSex", "PatientAge", "Manufacturer",
                "ManufacturerModelName", "aws_bucket", "crdc_series_uuid", "series_aws_url",
                "series_size_MB"]
        out = {name: raw[name] for name in same if name in have}
        derived: dict[str, tuple[str, Callable[[Any], Any]]] = {
            "SeriesDate": ("SeriesDate", self._date),
            "StudyDate": ("StudyDate", self._date),
            "SeriesNumber": ("SeriesNumber", self._integer),
            "StudyDesc": ("StudyDescription", lambda v: v),
            "ImageCount": ("instanceCount", lambda v: v),
            "FileSize": ("series_size_MB", lambda v: pc.cast(
                pc.round(pc.multiply(v, 1e6)), pa.int64())),
            "DataDescriptionURI": ("source_DOI", lambda v: pc.binary_join_element_wise(
                pa.scalar("https://doi.org/", text), v.cast(text), pa.scalar("", text))),
            "ThirdPartyAnalysis": ("analysis_result_id", lambda v: pc.if_else(
                pc.is_valid(v), pa.scalar("YES", text), pa.scalar(None, text))),
            "DateReleased": ("series_init_idc_version", self._released),
            "MaxSubmissionTimestamp": ("series_revised_idc_version", self._released),
        }
        for name, (source, build) in derived.items():
            if source in have:
                out[name] = build(raw[source])
        if "collection_id" in have:
            ids = raw["collection_id"]
            out["collection_id"] = ids
            out["Collection"] = self._lookup(ids, self.name_of, text)
            if constants:
                info = self._collections.get
                for i, name in enumerate(("SpeciesCode", "SpeciesDescription", "Phantom")):
                    out[name] = self._lookup(
                        ids, lambda c, i=i: info(c).species[i] if info(c) else None, text)
                if "source_DOI" in have:
                    out["LicenseName"], out["LicenseURI"] = self._licences(ids, raw)
        out["Authorized"] = pa.repeat(pa.scalar(1, pa.int64()), raw.num_rows) if hasattr(
            pa, "repeat") else pa.array([1] * raw.num_rows, pa.int64())
        return pa.table(out)

    def _licences(self, ids: Any, raw: pa.Table) -> tuple[Any, Any]:
        """LicenseName and LicenseURI: the licence collections_index gives the series' DOI."""
        pa, pc = self.pa, self.pc
        key = pc.binary_join_element_wise(
            ids.cast(pa.large_string()), pc.utf8_lower(raw["source_DOI"]).cast(pa.large_string()),
            pa.scalar(" ", pa.large_string()))

        def licence(k: str | None) -> tuple[str | None, str | None]:
            cid, _, doi = (k or "").partition(" ")
            info = self._collections.get(cid)
            return info.licences.get(doi, (None, None)) if info else (None, None)

        return tuple(self._lookup(key, lambda k, i=i: licence(k)[i], pa.large_string())
                     for i in range(2))

    # -- selecting rows ----------------------------------------------------------------------

    def _where(self, params: dict[str, str]) -> Any:
        """The filter expression of the v4 parameters given (Collection aside)."""
        pc, ds = self.pc, self.ds
        expression = None
        for name, value in params.items():
            if name in _FOLDED:
                term = pc.utf8_upper(ds.field(name)) == value.upper()
            elif name in ("StudyInstanceUID", "SeriesInstanceUID"):
                term = ds.field(name) == value
            else:
                continue
            expression = term if expression is None else expression & term
        return expression

    def _stat(self) -> str:
        """A digest of the index files' paths, sizes and modification times."""
        digest = hashlib.sha256(str(_CACHE_FORMAT).encode())
        for name in (INDEX_FILE, COLLECTIONS_FILE, VERSIONS_FILE):
            path = self.folder / name
            if path.is_file():
                stat = path.stat()
                digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def refresh(self) -> None:
        """Forget what was read if the index files have changed since (three ``stat`` calls)."""
        fingerprint = self._stat()
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
        """One collection's rows in v4 columns, sorted; from the cached Arrow file when there."""
        with self._lock:
            if collection_id in self._tables:
                return self._tables[collection_id]
            root = self._cache_root()
            path = root / f"{collection_id}.arrow" if root else None
            table = self._read_cached(path) if path else None
            if table is None:
                raw = self._dataset.to_table(
                    filter=self.ds.field("collection_id") == collection_id)
                table = self._v4(raw).sort_by([(c, "ascending") for c in _ORDER])
                del raw
                if path is not None and self._write_cached(path, table):
                    table = self._read_cached(path) or table
            self._tables[collection_id] = table
            return table

    def _read_cached(self, path: Path) -> pa.Table | None:
        try:
            return self.ipc.open_file(self.pa.memory_map(str(path))).read_all()
        except (OSError, self.pa.ArrowInvalid):
            return None

    def _write_cached(self, path: Path, table: pa.Table) -> bool:
        """Write ``table`` to ``path`` atomically; False (no copy kept) if that fails."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as sink, self.ipc.new_file(sink, table.schema) as out:
                    out.write_table(table.combine_chunks())
                os.replace(name, path)
            finally:
                if os.path.exists(name):
                    os.unlink(name)
        except OSError:
            return False
        return True

    def rows(self, params: dict[str, str], columns: Iterable[str] | None = None) -> pa.Table:
        """The series rows matching v4 filter parameters, in v4 columns, sorted by
        Collection, PatientID and UIDs.

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
        raw_columns = None if columns is None else sorted(_raw_columns(columns, params))
        raw = self._dataset.to_table(columns=raw_columns, filter=where)
        table = self._v4(raw, constants=columns is None or bool(
            {"SpeciesCode", "SpeciesDescription", "Phantom", "LicenseName"} & set(columns)))
        keys = [(c, "ascending") for c in _ORDER if c in table.column_names]
        return table.sort_by(keys) if keys else table

    def _since(self, table: pa.Table, from_date: str, *, strict: bool) -> pa.Table:
        """Rows released after (``strict``) or on/after ``from_date`` (``MM-DD-YYYY``)."""
        if self._releases is None:
            raise TCIABackendError(
                f"the IDC index at {str(self.folder)!r} has no {VERSIONS_FILE}, so no release "
                "dates: ask NBIA (backend='nbia') for what changed since a date")
        when = self.pa.scalar(datetime.strptime(from_date, "%m-%d-%Y"), self.pa.timestamp("ns"))
        compare = self.pc.greater if strict else self.pc.greater_equal
        return table.filter(self.pc.fill_null(compare(table["DateReleased"], when), False))

    # -- the answers -------------------------------------------------------------------------

    def frame(self, table: pa.Table, endpoint: str) -> pd.DataFrame:
        """``table`` as the typed DataFrame of ``endpoint`` (its columns; missing ones null)."""
        pa = self.pa
        schema = SCHEMAS[endpoint]
        kinds = {"str": pa.large_string(), "int": pa.int64(), "date": pa.timestamp("ns"),
                 "bool": pa.bool_(), "float": pa.float64()}
        arrays = [table[name] if name in table.column_names else pa.nulls(
            table.num_rows, kinds[kind]) for name, kind in schema.columns.items()]
        return pa.table(arrays, names=schema.names).to_pandas(types_mapper=_pandas_type)

    def _values(self, table: pa.Table, column: str, endpoint: str) -> pd.DataFrame:
        values = self.pc.unique(table[column])
        order = self.pc.array_sort_indices(values, null_placement="at_start")
        return self.frame(self.pa.table({column: values.take(order)}), endpoint)

    def _counts(self, table: pa.Table, column: str, endpoint: str) -> pd.DataFrame:
        patients = self.pa.table({column: table[column], "patient": self._patient_key(table)})
        counts = patients.group_by(column).aggregate([("patient", "count_distinct")])
        order = self.pc.array_sort_indices(counts[column].combine_chunks(),
                                           null_placement="at_start")
        counts = counts.take(order)
        return self.frame(self.pa.table({  # NBIA names a null value "" here
            column: self.pc.fill_null(counts[column], ""),
            "Count": counts["patient_count_distinct"],
            "Authorized": self.pa.array([1] * counts.num_rows, self.pa.int64())}), endpoint)

    def _first(self, table: pa.Table, keys: list[str], columns: list[str]) -> pa.Table:
        """One row per distinct ``keys``, in order of appearance, first non-null ``columns``."""
        groups = table.group_by(keys, use_threads=False).aggregate(
            [(c, "first") for c in columns] + [(keys[-1], "count")])
        names = {f"{c}_first": c for c in columns} | {f"{keys[-1]}_count": "_count"}
        return groups.rename_columns([names.get(n, n) for n in groups.column_names])

    def _patients(self, table: pa.Table, endpoint: str) -> pd.DataFrame:
        patients = self._first(table, ["Collection", "PatientID"], [
            "PatientSex", "SpeciesCode", "SpeciesDescription", "Phantom", "Authorized"])
        return self.frame(patients, endpoint)

    def _studies(self, table: pa.Table, endpoint: str) -> pd.DataFrame:
        studies = self._first(table, ["StudyInstanceUID"], [
            "StudyDate", "StudyDesc", "PatientAge", "PatientID", "PatientSex", "Collection",
            "Authorized"])
        studies = studies.rename_columns([{"StudyDesc": "StudyDescription", "_count": "SeriesCount"
                                           }.get(n, n) for n in studies.column_names])
        return self.frame(studies, endpoint)

    def answer(self, endpoint: str, params: dict[str, str]) -> pd.DataFrame:
        """The DataFrame NBIA's ``endpoint`` would answer to ``params`` (v4 names, validated).

        Raises
        ------
        TCIABackendError
            An endpoint the index cannot answer (shared carts, instance lists and headers:
            those need the objects), naming why.
        """
        self.refresh()
        values = {"getModalityValues": "Modality", "getBodyPartValues": "BodyPartExamined",
                  "getManufacturerValues": "Manufacturer"}
        counts = {"getCollectionValuesAndCounts": "Collection",
                  "getModalityValuesAndCounts": "Modality",
                  "getBodyPartValuesAndCounts": "BodyPartExamined",
                  "getManufacturerValuesAndCounts": "Manufacturer"}
        if endpoint == "getCollectionValues":
            names = sorted({self.name_of(i) for i in self._present})
            return self.frame(self.pa.table({"Collection": self.pa.array(
                names, self.pa.large_string())}), endpoint)
        if endpoint in values:
            column = values[endpoint]
            return self._values(self.rows(params, [column]), column, endpoint)
        if endpoint in counts:
            column = counts[endpoint]
            return self._counts(self.rows(params, [column, "Collection"]), column, endpoint)
        if endpoint in ("getPatient", "getPatientByCollectionAndModality"):
            return self._patients(self.rows(params), endpoint)
        if endpoint == "NewPatientsInCollection":
            rows = self._since(self.rows(params), params["fromDate"], strict=False)
            return self._patients(rows, endpoint)
        if endpoint == "getPatientStudy":
            return self._studies(self.rows(params), endpoint)
        if endpoint == "NewStudiesInPatientCollection":
            rows = self._since(self.rows(params), params["fromDate"], strict=False)
            return self._studies(rows, endpoint)
        if endpoint == "getSeries":
            return self.frame(self.rows(params), endpoint)
        if endpoint == "getUpdatedSeries":
            rows = self.rows({})
            return self.frame(self._since(rows, params["fromDate"], strict=True), endpoint)
        if endpoint == "getSeriesSize":
            rows = self.rows(params, ["FileSize", "ImageCount"])
            return self.frame(rows.rename_columns([{"FileSize": "TotalSizeInBytes",
                                                    "ImageCount": "ObjectCount"}.get(n, n)
                                                   for n in rows.column_names]), endpoint)
        if endpoint == "getSimpleSearch":
            return self.frame(self._search(params), "getSeries")
        if endpoint in ("getSeriesMetadata", "getSeriesMetaData"):
            uids = [u for u in params["list"].split(",") if u]
            return self.frame(self._by_uid(uids), "getSeriesMetadata")
        raise TCIABackendError(_UNANSWERED.get(endpoint, f"the IDC index cannot answer "
                                                          f"{endpoint}: use backend='nbia'"))

    def _search(self, form: dict[str, str]) -> pa.Table:
        """The series a getSimpleSearch form (:func:`intake_tcia.search.search_form`) selects,
        read as NBIA reads it: values of one criterion ORed, criteria ANDed, names folded."""
        pa, pc, ds = self.pa, self.pc, self.ds
        values: dict[str, list[str]] = {}
        released, more_than, anded = None, -1, False
        i = 0
        while f"criteriaType{i}" in form:
            kind = form[f"criteriaType{i}"]
            if kind in _CRITERIA:
                values.setdefault(_CRITERIA[kind], []).append(form[f"value{i}"])
            elif kind == "DateRangeCriteria":
                released = (form[f"fromDate{i}"], form[f"toDate{i}"])
            elif kind == "MinNumberOfStudiesCriteria":
                more_than = int(form[f"value{i}"])
            elif kind == "ModalityAndedSearchCriteria":
                anded = form[f"value{i}"] == "all"
            i += 1
        names = values.pop("Collection", None)
        tables = [self.rows({"Collection": n}) for n in names] if names else [self.rows({})]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        modalities = values.pop("Modality") if anded else []
        where = None
        for column, wanted in values.items():
            folded = column in _FOLDED
            keys = [w.upper() for w in wanted] if folded else wanted
            term = (pc.utf8_upper(ds.field(column)) if folded else ds.field(column)).isin(keys)
            if column == "BodyPartExamined" and _NOT_SPECIFIED in keys:
                term = term | ds.field(column).is_null()
            where = term if where is None else where & term
        if released is not None:
            self._since(table.slice(0, 0), released[0], strict=False)  # no release dates: refuse
            start, end = (pa.scalar(datetime.strptime(d, "%m-%d-%Y"), pa.timestamp("ns"))
                          for d in released)
            term = (ds.field("DateReleased") >= start) & (ds.field("DateReleased") <= end)
            where = term if where is None else where & term
        rows = table if where is None else table.filter(where)
        for modality in modalities:  # patients holding every modality asked; then their rows
            holders = table.filter(pc.utf8_upper(ds.field("Modality")) == modality.upper())
            rows = rows.filter(pc.is_in(self._patient_key(rows), self._patient_key(holders)))
        if more_than >= 0:
            studies = self.pa.table({"key": self._patient_key(rows), "study": rows[
                "StudyInstanceUID"]}).group_by("key").aggregate([("study", "count_distinct")])
            keep = studies.filter(pc.greater(studies["study_count_distinct"], more_than))["key"]
            rows = rows.filter(pc.is_in(self._patient_key(rows), keep))
        return rows.sort_by([(c, "ascending") for c in _ORDER])

    def _patient_key(self, table: pa.Table) -> Any:
        pa = self.pa
        return self.pc.binary_join_element_wise(
            table["Collection"].cast(pa.large_string()),
            table["PatientID"].cast(pa.large_string()), pa.scalar("\0", pa.large_string()))

    def _by_uid(self, uids: list[str], columns: list[str] | None = None) -> pa.Table:
        raw = self._dataset.to_table(
            columns=columns, filter=self.ds.field("SeriesInstanceUID").isin(uids))
        return self._v4(raw)

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
            SeriesInstanceUID, collection_id, Collection (TCIA's name), aws_bucket,
            crdc_series_uuid, series_aws_url (``s3://<bucket>/<crdc_series_uuid>/*``),
            instanceCount (Int64), series_size_MB (Float64).
        """
        uids = list(dict.fromkeys(series_uids))
        self.refresh()
        raw = self._dataset.to_table(
            columns=["SeriesInstanceUID", "collection_id", "aws_bucket", "crdc_series_uuid",
                     "series_aws_url", "instanceCount", "series_size_MB"],
            filter=self.ds.field("SeriesInstanceUID").isin(uids))
        raw = raw.append_column("Collection", self._lookup(
            raw["collection_id"], self.name_of, self.pa.large_string()))
        frame = raw.select(LOCATION_COLUMNS).to_pandas(types_mapper=_pandas_type)
        order = {u: i for i, u in enumerate(uids)}
        frame = frame.drop_duplicates("SeriesInstanceUID")
        return frame.sort_values("SeriesInstanceUID", key=lambda s: s.map(order),
                                 ignore_index=True)


#: getSimpleSearch criteria that select values of a v4 column.
_CRITERIA = {"CollectionCriteria": "Collection", "PatientCriteria": "PatientID",
             "StudyCriteria": "StudyInstanceUID", "SeriesCriteria": "SeriesInstanceUID",
             "ImageModalityCriteria": "Modality", "AnatomicalSiteCriteria": "BodyPartExamined",
             "ManufacturerCriteria": "Manufacturer", "SpeciesCriteria": "SpeciesCode"}
_NOT_SPECIFIED = "NOT SPECIFIED"

_UNANSWERED = {
    "getContentsByName": "shared carts live in NBIA only: the IDC index cannot answer "
                         "shared_cart(); use backend='nbia'",
    "getSOPInstanceUIDs": "the IDC index does not list instances (they are read from the "
                          "bucket's objects)",
    "getDicomTags": "the IDC index holds no DICOM headers (they are read from the bucket's "
                    "objects)",
}


def _raw_columns(columns: Iterable[str], params: dict[str, str]) -> set[str]:
    """The index columns that v4 ``columns`` and the filters of ``params`` need."""
    sources = {"SeriesDate": "SeriesDate", "StudyDate": "StudyDate", "StudyDesc":
               "StudyDescription", "ImageCount": "instanceCount", "FileSize": "series_size_MB",
               "DataDescriptionURI": "source_DOI", "ThirdPartyAnalysis": "analysis_result_id",
               "DateReleased": "series_init_idc_version", "MaxSubmissionTimestamp":
               "series_revised_idc_version", "Collection": "collection_id", "SpeciesCode":
               "collection_id", "SpeciesDescription": "collection_id", "Phantom":
               "collection_id", "LicenseName": "source_DOI", "LicenseURI": "source_DOI"}
    needed = {sources.get(c, c) for c in columns} | {"collection_id", "PatientID",
                                                      "StudyInstanceUID", "SeriesInstanceUID"}
    if {"LicenseName", "LicenseURI"} & set(columns):
        needed.add("collection_id")
    return needed | {p for p in params if p in _FOLDED or p.endswith("InstanceUID")}


def _pandas_type(kind: Any) -> Any:
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


def routed(
    client: TCIAClient, endpoint: str, params: dict[str, str], ask: Callable[[], pd.DataFrame]
) -> pd.DataFrame:
    """``ask()`` (NBIA) or the index's answer, as ``client.settings.backend`` says.

    ``"nbia"``: ``ask()``. ``"idc"``: the index, no request. ``"auto"``: ``ask()``, and when
    NBIA cannot be reached (:class:`TCIAConnectionError`, after its retries; an HTTP error
    status is an answer, not a fall-back) the index, with an :class:`IDCFallbackWarning`. If the
    index cannot answer either, the connection error is raised.
    """
    backend = client.settings.backend
    if backend == "idc":
        return client.idc_index.answer(endpoint, params)
    try:
        return ask()
    except TCIAConnectionError as exc:
        if backend != "auto":
            raise
        try:
            index = client.idc_index
            frame = index.answer(endpoint, params)
        except (TCIABackendError, MissingDependencyError, TCIANotFoundError):
            raise exc from None
        warnings.warn(f"NBIA could not be reached ({exc}); {endpoint} answered from the IDC "
                      f"index at {str(index.folder)!r}", IDCFallbackWarning, stacklevel=3)
        return frame


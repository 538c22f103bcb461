"""NBIA's query endpoints answered from an :class:`~intake_tcia.idc.index.IDCIndex`.

Each answer is the DataFrame NBIA's endpoint gives (:mod:`intake_tcia.schema`), made from the
index's v4 rows (:meth:`IDCIndex.rows <intake_tcia.idc.index.IDCIndex.rows>`) in Arrow and turned
into pandas once: value listings sorted with the missing value first, counts of patients per
value, patients and studies one row each (first non-null values), search read from the same
getSimpleSearch form NBIA is sent (:func:`intake_tcia.nbia.search.search_form`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._lazy import pandas as pd
from ..errors import (
    TCIABackendError,
)
from ..schema import SCHEMAS
from .index import COLLECTIONS_FILE, FOLDED, READ_COLUMNS, ROW_ORDER, pandas_type

if TYPE_CHECKING:
    import pyarrow as pa

    from .index import IDCIndex

__all__ = ["answer"]

#: getSimpleSearch criteria that select values of a v4 column.
_CRITERIA = {
    "CollectionCriteria": "Collection",
    "PatientCriteria": "PatientID",
    "StudyCriteria": "StudyInstanceUID",
    "SeriesCriteria": "SeriesInstanceUID",
    "ImageModalityCriteria": "Modality",
    "AnatomicalSiteCriteria": "BodyPartExamined",
    "ManufacturerCriteria": "Manufacturer",
    "SpeciesCriteria": "SpeciesCode",
}
_NOT_SPECIFIED = "NOT SPECIFIED"


_UNANSWERED = {
    "getContentsByName": "shared carts live in NBIA only: the IDC index cannot answer "
    "shared_cart(); use backend='nbia'",
    "getSOPInstanceUIDs": "the IDC index does not list instances (they are read from the "
    "bucket's objects)",
    "getDicomTags": "the IDC index holds no DICOM headers (they are read from the bucket's "
    "objects)",
}


def answer(index: IDCIndex, endpoint: str, params: dict[str, str]) -> pd.DataFrame:
    """The DataFrame NBIA's ``endpoint`` would answer to ``params`` (v4 names, validated).

    Raises
    ------
    TCIABackendError
        An endpoint the index cannot answer (shared carts, instance lists and headers: those
        need the objects), naming why.
    """
    return _Answers(index).answer(endpoint, params)


class _Answers:
    """The endpoints, over one index."""

    def __init__(self, index: IDCIndex) -> None:
        self.ix = index
        self.pa, self.pc, self.ds, self.pq = index.pa, index.pc, index.ds, index.pq

    def frame(self, table: pa.Table, endpoint: str) -> pd.DataFrame:
        """``table`` as the typed DataFrame of ``endpoint`` (its columns; missing ones null)."""
        pa = self.pa
        schema = SCHEMAS[endpoint]
        kinds = {
            "str": pa.large_string(),
            "int": pa.int64(),
            "date": pa.timestamp("ns"),
            "bool": pa.bool_(),
            "float": pa.float64(),
        }
        arrays = [
            table[name] if name in table.column_names else pa.nulls(table.num_rows, kinds[kind])
            for name, kind in schema.columns.items()
        ]
        return pa.table(arrays, names=schema.names).to_pandas(types_mapper=pandas_type)

    def _values(self, table: pa.Table, column: str, endpoint: str) -> pd.DataFrame:
        values = self.pc.unique(table[column])
        order = self.pc.array_sort_indices(values, null_placement="at_start")
        return self.frame(self.pa.table({column: values.take(order)}), endpoint)

    def _counts(self, table: pa.Table, column: str, endpoint: str) -> pd.DataFrame:
        patients = self.pa.table({column: table[column], "patient": self._patient_key(table)})
        counts = patients.group_by(column).aggregate([("patient", "count_distinct")])
        order = self.pc.array_sort_indices(
            counts[column].combine_chunks(), null_placement="at_start"
        )
        counts = counts.take(order)
        return self.frame(
            self.pa.table(
                {  # NBIA names a null value "" here
                    column: self.pc.fill_null(counts[column], ""),
                    "Count": counts["patient_count_distinct"],
                    "Authorized": self.pa.repeat(
                        self.pa.scalar(1, self.pa.int64()), counts.num_rows
                    ),
                }
            ),
            endpoint,
        )

    def _first(self, table: pa.Table, keys: list[str], columns: list[str]) -> pa.Table:
        """One row per distinct ``keys``, in order of appearance, first non-null ``columns``."""
        groups = table.group_by(keys, use_threads=False).aggregate(
            [(c, "first") for c in columns] + [(keys[-1], "count")]
        )
        names = {f"{c}_first": c for c in columns} | {f"{keys[-1]}_count": "_count"}
        return groups.rename_columns([names.get(n, n) for n in groups.column_names])

    def _patients(self, table: pa.Table, endpoint: str) -> pd.DataFrame:
        patients = self._first(
            table,
            ["Collection", "PatientID"],
            ["PatientSex", "SpeciesCode", "SpeciesDescription", "Phantom", "Authorized"],
        )
        return self.frame(patients, endpoint)

    def _studies(self, table: pa.Table, endpoint: str) -> pd.DataFrame:
        studies = self._first(
            table,
            ["StudyInstanceUID"],
            [
                "StudyDate",
                "StudyDesc",
                "PatientAge",
                "PatientID",
                "PatientSex",
                "Collection",
                "Authorized",
            ],
        )
        studies = studies.rename_columns(
            [
                {"StudyDesc": "StudyDescription", "_count": "SeriesCount"}.get(n, n)
                for n in studies.column_names
            ]
        )
        return self.frame(studies, endpoint)

    def answer(self, endpoint: str, params: dict[str, str]) -> pd.DataFrame:
        """The DataFrame NBIA's ``endpoint`` would answer to ``params`` (v4 names, validated).

        Raises
        ------
        TCIABackendError
            An endpoint the index cannot answer (shared carts, instance lists and headers:
            those need the objects), naming why.
        """
        values = {
            "getModalityValues": "Modality",
            "getBodyPartValues": "BodyPartExamined",
            "getManufacturerValues": "Manufacturer",
        }
        counts = {
            "getCollectionValuesAndCounts": "Collection",
            "getModalityValuesAndCounts": "Modality",
            "getBodyPartValuesAndCounts": "BodyPartExamined",
            "getManufacturerValuesAndCounts": "Manufacturer",
        }
        if endpoint == "getCollectionValues":
            names = sorted({self.ix.name_of(i) for i in self.ix._present})
            return self.frame(
                self.pa.table({"Collection": self.pa.array(names, self.pa.large_string())}),
                endpoint,
            )
        if endpoint in values:
            column = values[endpoint]
            return self._values(self.ix.rows(params, [column]), column, endpoint)
        if endpoint in counts:
            column = counts[endpoint]
            return self._counts(self.ix.rows(params, [column, "Collection"]), column, endpoint)
        if endpoint in ("getPatient", "getPatientByCollectionAndModality"):
            return self._patients(self.ix.rows(params), endpoint)
        if endpoint == "NewPatientsInCollection":
            rows = self.ix._since(self.ix.rows(params), params["fromDate"], strict=False)
            return self._patients(rows, endpoint)
        if endpoint == "getPatientStudy":
            return self._studies(self.ix.rows(params), endpoint)
        if endpoint == "NewStudiesInPatientCollection":
            rows = self.ix._since(self.ix.rows(params), params["fromDate"], strict=False)
            return self._studies(rows, endpoint)
        if endpoint == "getSeries":
            return self.frame(self.ix.rows(params), endpoint)
        if endpoint == "getUpdatedSeries":  # only the rows of the releases after the date
            since = datetime.strptime(params["fromDate"], "%m-%d-%Y")
            versions = [v for v, day in self.ix._dated().items() if day > since]
            raw = self.ix._dataset.to_table(
                columns=READ_COLUMNS, filter=self.ds.field("series_init_idc_version").isin(versions)
            )
            return self.frame(self.ix._v4(raw), endpoint)
        if endpoint == "getSeriesSize":
            rows = self.ix.rows(params, ["FileSize", "ImageCount"])
            return self.frame(
                rows.rename_columns(
                    [
                        {"FileSize": "TotalSizeInBytes", "ImageCount": "ObjectCount"}.get(n, n)
                        for n in rows.column_names
                    ]
                ),
                endpoint,
            )
        if endpoint == "getCollectionOrSeriesForDOI":
            return self._for_doi(params["DOI"], params["CollectionOrSeries"] == "series")
        if endpoint == "getCollectionDescriptions":
            return self._descriptions(params.get("collectionName"))
        if endpoint == "getSimpleSearch":
            return self.frame(self._search(params), "getSeries")
        if endpoint in ("getSeriesMetadata", "getSeriesMetaData"):
            uids = [u for u in params["list"].split(",") if u]
            return self.frame(self._by_uid(uids), "getSeriesMetadata")
        raise TCIABackendError(
            _UNANSWERED.get(endpoint, f"the IDC index cannot answer {endpoint}: use backend='nbia'")
        )

    def _for_doi(self, doi_url: str, series: bool) -> pd.DataFrame:
        """getCollectionOrSeriesForDOI: the series (or collections) whose DOI is ``doi_url``'s
        (DOIs compared case-insensitively: IDC keeps them in lower case)."""
        pc, ds = self.pc, self.ds
        bare = doi_url.removeprefix("https://doi.org/").upper()
        raw = self.ix._dataset.to_table(
            columns=["collection_id", "SeriesInstanceUID", "analysis_result_id"],
            filter=pc.utf8_upper(ds.field("source_DOI")) == bare,
        )
        table = self.ix._v4(raw, constants=False)
        keys = ["Collection", "ThirdPartyAnalysis"] + (["SeriesInstanceUID"] if series else [])
        table = self._first(table, keys, ["Authorized"]).drop_columns(["_count"])
        return self.frame(table, "getCollectionOrSeriesForDOI")

    def _descriptions(self, name: str | None) -> pd.DataFrame:
        """getCollectionDescriptions from collections_index: the description is plain text
        there (NBIA's is HTML), the DOI of the collection's original data its descriptionURI."""
        table = self.pq.read_table(
            self.ix.folder / COLLECTIONS_FILE,
            columns=["collection_id", "collection_name", "description", "sources"],
        ).to_pylist()
        present = set(self.ix._present)
        rows = [
            {
                "collectionName": row["collection_name"],
                "description": row["description"],
                "descriptionURI": next(
                    (
                        s["source_url"]
                        for s in row["sources"] or ()
                        if s.get("source_type") == "original_data"
                    ),
                    None,
                ),
            }
            for row in table
            if row["collection_id"] in present
            and (name is None or row["collection_name"].upper() == name.upper())
        ]
        rows.sort(key=lambda r: r["collectionName"])
        text = self.pa.large_string()
        return self.frame(
            self.pa.Table.from_pylist(
                rows,
                schema=self.pa.schema(
                    [("collectionName", text), ("description", text), ("descriptionURI", text)]
                ),
            ),
            "getCollectionDescriptions",
        )

    def _search(self, form: dict[str, str]) -> pa.Table:
        """The series a getSimpleSearch form (:func:`intake_tcia.nbia.search.search_form`) selects,
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
        tables = [self.ix.rows({"Collection": n}) for n in names] if names else [self.ix.rows({})]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        modalities = values.pop("Modality") if anded else []
        where = None
        for column, wanted in values.items():
            folded = column in FOLDED
            keys = [w.upper() for w in wanted] if folded else wanted
            term = (pc.utf8_upper(ds.field(column)) if folded else ds.field(column)).isin(keys)
            if column == "BodyPartExamined" and _NOT_SPECIFIED in keys:
                term = term | ds.field(column).is_null()
            where = term if where is None else where & term
        if released is not None:
            self.ix._dated()
            start, end = (
                pa.scalar(datetime.strptime(d, "%m-%d-%Y"), pa.timestamp("ns")) for d in released
            )
            term = (ds.field("DateReleased") >= start) & (ds.field("DateReleased") <= end)
            where = term if where is None else where & term
        rows = table if where is None else table.filter(where)
        for modality in modalities:  # patients holding every modality asked; then their rows
            holders = table.filter(pc.utf8_upper(ds.field("Modality")) == modality.upper())
            rows = rows.filter(pc.is_in(self._patient_key(rows), self._patient_key(holders)))
        if more_than >= 0:
            studies = (
                self.pa.table({"key": self._patient_key(rows), "study": rows["StudyInstanceUID"]})
                .group_by("key")
                .aggregate([("study", "count_distinct")])
            )
            keep = studies.filter(pc.greater(studies["study_count_distinct"], more_than))["key"]
            rows = rows.filter(pc.is_in(self._patient_key(rows), keep))
        return rows.sort_by([(c, "ascending") for c in ROW_ORDER])

    def _patient_key(self, table: pa.Table) -> Any:
        pa = self.pa
        return self.pc.binary_join_element_wise(
            table["Collection"].cast(pa.large_string()),
            table["PatientID"].cast(pa.large_string()),
            pa.scalar("\0", pa.large_string()),
        )

    def _by_uid(self, uids: list[str]) -> pa.Table:
        raw = self.ix._dataset.to_table(
            columns=READ_COLUMNS, filter=self.ds.field("SeriesInstanceUID").isin(uids)
        )
        return self.ix._v4(raw)

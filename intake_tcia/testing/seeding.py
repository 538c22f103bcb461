"""Large, realistic metadata tables for benchmarks, from the ``idc-index-data`` parquet."""

from __future__ import annotations

import pandas as pd

__all__ = ["idc_series_table"]

_LICENSES = {
    "CC BY 3.0": ("Creative Commons Attribution 3.0 Unported License",
                  "http://creativecommons.org/licenses/by/3.0/"),
    "CC BY 4.0": ("Creative Commons Attribution 4.0 International License",
                  "https://creativecommons.org/licenses/by/4.0/"),
    "CC BY-NC 3.0": ("Creative Commons Attribution-NonCommercial 3.0 Unported License",
                     "https://creativecommons.org/licenses/by-nc/3.0/"),
    "CC BY-NC 4.0": ("Creative Commons Attribution-NonCommercial 4.0 International License",
                     "https://creativecommons.org/licenses/by-nc/4.0/"),
}
_COLUMNS = ["collection_id", "analysis_result_id", "PatientID", "SeriesInstanceUID",
            "StudyInstanceUID", "source_DOI", "PatientAge", "PatientSex", "StudyDate",
            "StudyDescription", "BodyPartExamined", "Modality", "Manufacturer",
            "ManufacturerModelName", "SeriesDate", "SeriesDescription", "SeriesNumber",
            "instanceCount", "license_short_name", "series_size_MB"]


def _mdy(values: pd.Series) -> pd.Series:
    dates = pd.to_datetime(values, format="%Y-%m-%d", errors="coerce")
    return dates.dt.strftime("%m-%d-%Y").astype(object).where(dates.notna(), None)


def idc_series_table(collection: str = "NLST", limit: int | None = None) -> pd.DataFrame:
    """Map IDC's series index onto v4 getSeries rows (metadata only).

    Parameters
    ----------
    collection : str
        A TCIA collection name (``"NLST"``, ``"LIDC-IDRI"``; IDC's ``collection_id`` is the same
        name in lower case with ``_`` for ``-``).
    limit : int, optional
        Keep only the first ``limit`` series.

    Returns
    -------
    pandas.DataFrame
        v4 getSeries columns (Collection, PatientID, UIDs, Modality, BodyPartExamined,
        Manufacturer, SeriesDescription, SeriesNumber, ImageCount, FileSize, DataDescriptionURI,
        LicenseName, LicenseURI, StudyDate, SeriesDate, ...) with None for nulls; pass it to
        :meth:`SampleArchive.seed_series_metadata`.

    Raises
    ------
    MissingDependencyError
        If ``idc-index-data`` is not installed (the ``bench`` extra).
    """
    try:
        import idc_index_data
        import pyarrow.dataset as pads
    except ImportError as exc:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(
            "idc_series_table needs idc-index-data and pyarrow: pip install intake-tcia[bench]"
        ) from exc
    collection_id = collection.lower().replace("-", "_")
    scanner = pads.dataset(idc_index_data.IDC_INDEX_PARQUET_FILEPATH).scanner(
        columns=_COLUMNS, filter=pads.field("collection_id") == collection_id)
    idc = (scanner.to_table() if limit is None else scanner.head(limit)).to_pandas()
    short = idc["license_short_name"]
    names = {s: _LICENSES.get(s, (s, None)) for s in short.dropna().unique()}
    rows = pd.DataFrame({
        "SeriesInstanceUID": idc["SeriesInstanceUID"],
        "StudyInstanceUID": idc["StudyInstanceUID"],
        "Modality": idc["Modality"],
        "SeriesDate": _mdy(idc["SeriesDate"]),
        "SeriesDescription": idc["SeriesDescription"],
        "BodyPartExamined": idc["BodyPartExamined"],
        "SeriesNumber": pd.to_numeric(idc["SeriesNumber"], errors="coerce").round(),
        "Collection": collection,
        "PatientID": idc["PatientID"],
        "PatientSex": idc["PatientSex"],
        "PatientAge": idc["PatientAge"],
        "Manufacturer": idc["Manufacturer"],
        "ManufacturerModelName": idc["ManufacturerModelName"],
        "ImageCount": idc["instanceCount"],
        "LicenseName": short.map({s: n for s, (n, _) in names.items()}),
        "LicenseURI": short.map({s: u for s, (_, u) in names.items()}),
        "DataDescriptionURI": "https://doi.org/" + idc["source_DOI"],
        "FileSize": (idc["series_size_MB"] * 1e6).round(),
        "ReleasedStatus": "Yes",
        "StudyDesc": idc["StudyDescription"],
        "StudyDate": _mdy(idc["StudyDate"]),
        "ThirdPartyAnalysis": idc["analysis_result_id"].notna().map({True: "YES", False: "NO"}),
        "Authorized": 1,
    })
    for column in ("SeriesNumber", "ImageCount", "FileSize"):
        rows[column] = rows[column].astype("Int64")
    rows = rows.astype({c: object for c in rows.columns if rows[c].dtype != "Int64"})
    return rows.where(rows.notna(), None)

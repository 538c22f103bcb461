"""The sample archive's series as an IDC index folder, laid out as the ``idc-index-data`` package.

:func:`write_idc_index` writes ``idc_index.parquet`` (one row per series, the columns and Arrow
types of the real file), ``collections_index.parquet`` (``collection_id`` -> TCIA's name, species,
the DOI's licence) and ``version_metadata_index.parquet`` (one IDC "release" per distinct release
date of the archive, so DateReleased survives the trip). Values come from the same table the NBIA
sample server answers from, so the two backends give the same frames; CRDC names come from
:mod:`intake_tcia.testing.idc`. Point ``idc_index`` (``INTAKE_TCIA_IDC_INDEX``) at the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pydicom

from ..idc.index import COLLECTIONS_FILE, INDEX_FILE, VERSIONS_FILE
from ..nbia.search import description_text
from .builder import SampleArchive
from .idc import BUCKET, crdc_series_uuid, series_aws_url
from .seeding import _LICENSES

__all__ = ["write_idc_index", "index_schemas"]

_SHORT = {name: short for short, (name, _) in _LICENSES.items()}
#: idc_index.parquet's columns, in the real file's order; int and float ones named.
_INDEX_COLUMNS = (
    "collection_id analysis_result_id PatientID SeriesInstanceUID StudyInstanceUID source_DOI "
    "PatientAge PatientSex StudyDate StudyDescription BodyPartExamined Modality SOPClassUID "
    "sop_class_name TransferSyntaxUID transfer_syntax_name PhotometricInterpretation "
    "PixelRepresentation Manufacturer ManufacturerModelName SeriesDate SeriesDescription "
    "SeriesNumber instanceCount license_short_name series_init_idc_version "
    "series_revised_idc_version aws_bucket crdc_series_uuid series_aws_url series_size_MB"
).split()
_INTS = ("instanceCount", "series_init_idc_version", "series_revised_idc_version")


def index_schemas() -> dict[str, Any]:
    """The Arrow schemas of the three files, as ``idc-index-data`` 25 writes them, by file name."""
    import pyarrow as pa

    text = pa.large_string()
    index = pa.schema(
        [
            (c, pa.int64() if c in _INTS else pa.float64() if c == "series_size_MB" else text)
            for c in _INDEX_COLUMNS
        ]
    )
    plain = pa.string()
    source = pa.struct(
        [
            ("source_id", plain),
            ("source_title", plain),
            ("source_type", plain),
            ("source_doi", plain),
            ("source_url", plain),
            ("modalities", plain),
            (
                "license",
                pa.struct(
                    [
                        ("license_url", plain),
                        ("license_long_name", plain),
                        ("license_short_name", plain),
                    ]
                ),
            ),
            ("citation", plain),
            (
                "provenance",
                pa.struct(
                    [
                        ("data_contributor", plain),
                        ("source_data_provider", plain),
                        ("deidentification_party", plain),
                        ("dicom_conversion_by", plain),
                    ]
                ),
            ),
            ("Access", plain),
            ("ImageTypes", plain),
        ]
    )
    collections = pa.schema(
        [
            ("collection_name", text),
            ("collection_id", text),
            ("cancer_types", text),
            ("tumor_locations", text),
            ("subjects", pa.int64()),
            ("species", text),
            ("sources", pa.list_(source)),
            ("supporting_data", text),
            ("program_id", text),
            ("status", text),
            ("updated", text),
            ("description", text),
        ]
    )
    versions = pa.schema([("idc_version", pa.int64()), ("version_timestamp", text)])
    return {INDEX_FILE: index, COLLECTIONS_FILE: collections, VERSIONS_FILE: versions}


def collection_id(name: str) -> str:
    """str: IDC's ``collection_id`` of a TCIA collection name (``LIDC-IDRI`` -> ``lidc_idri``)."""
    return name.lower().replace("-", "_").replace(" ", "_")


def _iso(mdy: Any) -> str | None:
    """``MM-DD-YYYY`` -> ``YYYY-MM-DD`` (None stays None)."""
    if not isinstance(mdy, str) or len(mdy) != 10:
        return None
    return f"{mdy[6:]}-{mdy[:2]}-{mdy[3:5]}"


def _header(archive: SampleArchive, series_uid: str) -> dict[str, str | None]:
    """SOP class, transfer syntax and pixel facts of a series' first file (None: no files)."""
    files = archive.instances(series_uid)
    if not files:
        return {}
    ds = pydicom.dcmread(files[0][1], stop_before_pixels=True)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    sop = ds.get("SOPClassUID")
    return {
        "SOPClassUID": str(sop) if sop else None,
        "sop_class_name": sop.name if sop else None,
        "TransferSyntaxUID": str(syntax) if syntax else None,
        "transfer_syntax_name": syntax.name if syntax else None,
        "PhotometricInterpretation": ds.get("PhotometricInterpretation"),
        "PixelRepresentation": (
            str(ds.PixelRepresentation) if "PixelRepresentation" in ds else None
        ),
    }


def write_idc_index(folder: str | Path, archive: SampleArchive | None = None) -> Path:
    """Write the IDC index of ``archive``'s series (default: :meth:`SampleArchive.default`).

    Parameters
    ----------
    folder : path-like
        Created if needed; the three parquet files are (re)written in it.
    archive : SampleArchive, optional
        The archive whose series to list (the NBIA sample server's, by default).

    Returns
    -------
    pathlib.Path
        ``folder``, for ``idc_index=``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    archive = archive if archive is not None else SampleArchive.default()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = archive.table
    dates = sorted(
        {d for c in ("DateReleased", "MaxSubmissionTimestamp") for d in table[c].dropna()},
        key=lambda d: _iso(d) or "",
    )
    version = {d: i + 1 for i, d in enumerate(dates)}
    rows = []
    for record in table.to_dict("records"):
        uid = record["SeriesInstanceUID"]
        doi = record["DataDescriptionURI"]
        number = record["SeriesNumber"]
        size = record["FileSize"]
        rows.append(
            {
                "collection_id": collection_id(record["Collection"]),
                "analysis_result_id": None if record["ThirdPartyAnalysis"] != "YES" else "analysis",
                "PatientID": record["PatientID"],
                "SeriesInstanceUID": uid,
                "StudyInstanceUID": record["StudyInstanceUID"],
                "source_DOI": doi.removeprefix("https://doi.org/")
                if isinstance(doi, str)
                else None,
                "PatientAge": record["PatientAge"],
                "PatientSex": record["PatientSex"],
                "StudyDate": _iso(record["StudyDate"]),
                "StudyDescription": record["StudyDesc"],
                "BodyPartExamined": record["BodyPartExamined"],
                "Modality": record["Modality"],
                **_header(archive, uid),
                "Manufacturer": record["Manufacturer"],
                "ManufacturerModelName": record["ManufacturerModelName"],
                "SeriesDate": _iso(record["SeriesDate"]),
                "SeriesDescription": record["SeriesDescription"],
                "SeriesNumber": None if pd.isna(number) else str(int(number)),
                "instanceCount": None
                if pd.isna(record["ImageCount"])
                else int(record["ImageCount"]),
                "license_short_name": _SHORT.get(record["LicenseName"], record["LicenseName"]),
                "series_init_idc_version": version.get(record["DateReleased"]),
                "series_revised_idc_version": version.get(record["MaxSubmissionTimestamp"]),
                "aws_bucket": BUCKET,
                "crdc_series_uuid": crdc_series_uuid(uid),
                "series_aws_url": series_aws_url(uid),
                "series_size_MB": None if pd.isna(size) else int(size) / 1e6,
            }
        )
    schemas = index_schemas()
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas[INDEX_FILE]), folder / INDEX_FILE)
    pq.write_table(
        pa.Table.from_pylist(_collections(archive), schema=schemas[COLLECTIONS_FILE]),
        folder / COLLECTIONS_FILE,
    )
    releases = [{"idc_version": v, "version_timestamp": _iso(d)} for d, v in version.items()]
    pq.write_table(
        pa.Table.from_pylist(releases, schema=schemas[VERSIONS_FILE]), folder / VERSIONS_FILE
    )
    return folder


def _collections(archive: SampleArchive) -> list[dict[str, Any]]:
    """collections_index rows of the collections that hold series."""
    table = archive.table
    out = []
    for name, rows in table.groupby("Collection", sort=True):
        info = archive.collection(name)
        species = rows["SpeciesDescription"].dropna().unique().tolist()
        modalities = ", ".join(sorted(rows["Modality"].dropna().unique()))
        out.append(
            {
                "collection_name": name,
                "collection_id": collection_id(name),
                "cancer_types": None,
                "tumor_locations": None,
                "subjects": int(rows["PatientID"].nunique()),
                "species": "Human" if species == ["Homo sapiens"] else None,
                "sources": [
                    {
                        "source_id": collection_id(name),
                        "source_title": info.title,
                        "source_type": "original_data",
                        "source_doi": info.doi,
                        "source_url": info.doi_url,
                        "modalities": modalities,
                        "license": {
                            "license_url": info.license_uri,
                            "license_long_name": info.license_name,
                            "license_short_name": _SHORT.get(info.license_name),
                        },
                        "citation": None,
                        "provenance": None,
                        "Access": "Public",
                        "ImageTypes": modalities,
                    }
                ],
                "supporting_data": None,
                "program_id": "community",
                "status": "Complete",
                "updated": _iso(info.date_released),
                "description": description_text(info.description),
            }
        )
    return out

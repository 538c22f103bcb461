"""IDC's clinical data of a collection, as DataFrames.

IDC keeps the clinical tables that come with its collections as parquet folders in the public
bucket ``idc-open-metadata``, ``bigquery_export/idc_v{major}_clinical/<table>/*.parquet`` (the
same endpoint as the images, ``settings.idc_url``), described by the supplementary index
``clinical_index`` (one row per collection, table and column: ``collection_id``, ``table_name``
``bigquery-public-data.idc_v{major}_clinical.<table>``, ``short_table_name``, ...). idc-index
copies the whole folder with s5cmd; here only the tables of the collection asked for are fetched
(ListObjectsV2, then one GET per object, each object's MD5 checked against a plain-MD5 ETag, each
file read as parquet), into the cache once (``<cache_dir>/idc-clinical/<digest of idc_url>/
idc_v{major}_clinical/<table>/``, published whole by one rename). A table's ``dicom_patient_id``
becomes ``PatientID``, first; only the rows of the collection's patients (those the index lists
for it) are returned, one row per record as the table keeps them.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import secrets
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .._validate import validate_text
from ..errors import TCIABackendError, TCIAIntegrityError, TCIAResponseError, TCIAUnknownNameError
from .bucket import IDCLocation, list_objects, read_object
from .names import collection_ids, collection_name
from .supplementary import fetch_index, index_folder

if TYPE_CHECKING:
    import pandas as pd

    from .backend import IDCBackend

__all__ = ["clinical", "BUCKET", "tables_of"]

#: The bucket of IDC's clinical tables (and other metadata).
BUCKET = "idc-open-metadata"
_RELEASE = re.compile(r"\.(idc_v\d+_clinical)\.")
_DONE = ".complete"
_lock = threading.Lock()


def _collection_id(idc: IDCBackend, collection: str) -> str:
    """IDC's id of a collection given by TCIA name or id; TCIAUnknownNameError (the closest
    names and ids) before any request when collections_index lists neither."""
    value = validate_text(collection, "collection")
    ids = collection_ids(index_folder(idc.settings) / "collections_index.parquet")
    if value in ids:
        return value
    name = collection_name(idc.settings, value).upper()
    found = [i for i, n in ids.items() if n.upper() == name]
    if not found:
        raise TCIAUnknownNameError(
            "collection", value, [*ids.values(), *ids], str(index_folder(idc.settings)),
            "the IDC index",
        )
    return found[0]


def tables_of(idc: IDCBackend, collection_id: str) -> dict[str, str]:
    """The collection's clinical tables: short name -> ``idc_v{major}_clinical`` folder (from
    ``clinical_index``, fetched once if absent)."""
    import pyarrow.dataset as ds

    path = fetch_index(idc.settings, idc.transport, "clinical_index").path
    table = ds.dataset(str(path), format="parquet").to_table(
        columns=["short_table_name", "table_name"],
        filter=ds.field("collection_id") == collection_id,
    )
    found: dict[str, str] = {}
    for short, full in zip(table["short_table_name"].to_pylist(),
                           table["table_name"].to_pylist(), strict=True):
        release = _RELEASE.search(full or "")
        if short and release:
            found.setdefault(short, release.group(1))
    return dict(sorted(found.items()))


def _folder(idc: IDCBackend, release: str, table: str) -> Path:
    endpoint = hashlib.sha256(idc.settings.idc_url.encode()).hexdigest()[:16]
    return idc.settings.cache_dir / "idc-clinical" / endpoint / release / table


def _fetch_table(idc: IDCBackend, release: str, table: str) -> Path:
    """The table's folder in the cache, fetched whole and verified the first time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = _folder(idc, release, table)
    with _lock:
        if (target / _DONE).is_file():
            return target
        prefix = f"bigquery_export/{release}/{table}/"
        budget = idc.transport.budget()
        objects = list_objects(idc, IDCLocation(table, BUCKET, prefix), budget=budget)
        objects = [o for o in objects if o.key.endswith(".parquet")]
        if not objects:
            raise TCIAResponseError(
                f"s3://{BUCKET}/{prefix} holds no parquet file, though clinical_index lists {table}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{table}.{secrets.token_hex(4)}")
        staging.mkdir()
        try:
            for obj in objects:
                url = f"{idc.settings.idc_url}{BUCKET}/{obj.key}"
                data = bytes(read_object(idc, url, None, budget))
                if obj.md5 and hashlib.md5(data, usedforsecurity=False).hexdigest() != obj.md5:
                    raise TCIAIntegrityError(f"{url}: the MD5 differs from the listing's ETag")
                (staging / obj.name).write_bytes(data)
                try:
                    pq.read_metadata(staging / obj.name)
                except (OSError, pa.ArrowException) as exc:
                    raise TCIAResponseError(f"{url} is not a readable parquet file: {exc}") from exc
            (staging / _DONE).write_text(str(len(objects)))
            if target.exists():  # an earlier, unfinished copy
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _patients(idc: IDCBackend, collection_id: str) -> list[str]:
    import pyarrow.dataset as ds

    index = ds.dataset(str(index_folder(idc.settings) / "idc_index.parquet"), format="parquet")
    column = index.to_table(columns=["PatientID"],
                            filter=ds.field("collection_id") == collection_id)["PatientID"]
    return sorted(set(column.drop_null().to_pylist()))


def _read(folder: Path, patients: list[str]) -> pd.DataFrame:
    """The table's rows of those patients, ``PatientID`` (from ``dicom_patient_id``) first."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    data = ds.dataset(sorted(str(p) for p in folder.glob("*.parquet")), format="parquet")
    if "dicom_patient_id" in data.schema.names:
        wanted = pa.array(patients, pa.string())
        table = data.to_table(filter=ds.field("dicom_patient_id").cast(pa.string()).isin(wanted))
        frame = table.to_pandas()
        frame = frame.rename(columns={"dicom_patient_id": "PatientID"})
        frame = frame[["PatientID", *[c for c in frame.columns if c != "PatientID"]]]
    else:
        raise TCIAResponseError(
            f"the clinical table in {str(folder)!r} has no dicom_patient_id column to tell "
            "the collection's rows by"
        )
    return frame.reset_index(drop=True)


def clinical(
    idc: IDCBackend, collection: str, table: str | None = None
) -> dict[str, pd.DataFrame] | pd.DataFrame:
    """A collection's clinical tables (see the module doc and
    :meth:`TCIAClient.clinical <intake_tcia.client.TCIAClient.clinical>`)."""
    cid = _collection_id(idc, collection)
    if table is not None:
        table = validate_text(table, "table")
    listed = tables_of(idc, cid)
    if table is not None and table not in listed:
        close = difflib.get_close_matches(table, listed, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise TCIABackendError(
            f"collection {cid} has no clinical table {table!r}{hint} (its tables: "
            f"{', '.join(listed) or 'none'})"
        )
    patients = _patients(idc, cid)
    wanted = [table] if table is not None else list(listed)
    frames = {t: _read(_fetch_table(idc, listed[t], t), patients) for t in wanted}
    return frames[table] if table is not None else frames

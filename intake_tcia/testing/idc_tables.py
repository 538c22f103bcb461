"""The sample archive's other IDC tables: supplementary indices and clinical data, offline.

:func:`write_idc_tables` writes any of IDC's tables (``prior_versions_index``, ``sm_index``,
``seg_index``, ``clinical_index``, ...) for the series of a sample index folder
(:func:`~intake_tcia.testing.write_idc_index`), in the real schema: the columns of the
``{name}_schema.json`` that ``idc-index-data`` ships, in their order and types. Columns the
index also has (SeriesInstanceUID, PatientID, Modality, ...) carry the series' own values; the
others carry made-up values of the right type. Each table holds the series it is about
(``seg_index`` the SEG series, ``ct_index`` the CT series, ...).

:class:`IDCTablesServer` serves them over loopback HTTP the way idc-index fetches them: ``GET
{url}{name}.parquet`` answers a redirect to the file (as GitHub's release folder answers one to
its download host), so ``idc_index_url=server.url`` makes ``fetch_index`` work offline.

Clinical data: :func:`clinical_tables` makes, per collection, a table
``<collection_id>_clinical`` (one row per patient) and a table ``sample_follow_up`` shared by every
collection (several rows per patient); ``clinical_index`` describes them, and
:func:`put_clinical_tables` puts them in an :class:`~intake_tcia.testing.IDCBucketServer` as IDC
does: bucket ``idc-open-metadata``, ``bigquery_export/idc_v{major}_clinical/<table>/*.parquet``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..idc.supplementary import SUPPLEMENTARY

__all__ = [
    "write_idc_tables",
    "clinical_tables",
    "put_clinical_tables",
    "clinical_major",
    "IDCTablesServer",
    "CLINICAL_BUCKET",
    "SUPPLEMENTARY",
]

CLINICAL_BUCKET = "idc-open-metadata"
#: The modalities of the series each table is about (None: every series).
_ABOUT: dict[str, tuple[str, ...] | None] = {
    "sm_index": ("SM",),
    "sm_instance_index": ("SM",),
    "seg_index": ("SEG",),
    "rtstruct_index": ("RTSTRUCT",),
    "ann_index": ("ANN",),
    "ann_group_index": ("ANN",),
    "ct_index": ("CT",),
    "mr_index": ("MR",),
    "pt_index": ("PT",),
    "contrast_index": ("CT", "MR", "PT"),
    "volume_geometry_index": ("CT", "MR", "PT"),
    "prior_versions_index": None,
    "analysis_results_index": (),
}


def _schema_file(name: str) -> Path:
    from ..idc.index import default_folder

    stem = "idc_index" if name == "index" else name
    return default_folder() / f"{stem}_schema.json"


def _arrow_type(bq_type: str, mode: str, column: str) -> Any:
    import pyarrow as pa

    kind = {
        "STRING": pa.string(),
        "INTEGER": pa.int64(),
        "FLOAT": pa.float64(),
        "BOOLEAN": pa.bool_(),
        "RECORD": pa.struct([("code", pa.string()), ("meaning", pa.string())]),
    }.get(bq_type, pa.string())
    if column == "values" and bq_type == "RECORD":  # clinical_index: a column's values
        kind = pa.struct([("option_code", pa.string()), ("option_description", pa.string())])
    return pa.list_(kind) if mode == "REPEATED" else kind


#: Plausible values of a few columns whose made-up text would read oddly.
_PLAUSIBLE = {"SegmentationType": "BINARY", "AlgorithmType": "MANUAL",
              "AlgorithmName": "sample-archive"}


def _made_up(bq_type: str, mode: str, column: str, i: int) -> Any:
    if column in _PLAUSIBLE and bq_type == "STRING":
        return [_PLAUSIBLE[column]] if mode == "REPEATED" else _PLAUSIBLE[column]
    value: Any = {
        "STRING": f"{column} {i + 1}",
        "INTEGER": i + 1,
        "FLOAT": i + 0.5,
        "BOOLEAN": i % 2 == 0,
        "RECORD": {"code": f"C{i + 1}", "meaning": f"{column} {i + 1}"},
    }.get(bq_type, f"{column} {i + 1}")
    return [value] if mode == "REPEATED" else value


def _table(name: str, records: list[dict[str, Any]]) -> Any:
    """A table of ``name``'s schema holding ``records`` (missing columns made up)."""
    import pyarrow as pa

    columns = json.loads(_schema_file(name).read_text(encoding="utf-8"))["columns"]
    schema = pa.schema(
        [(c["name"], _arrow_type(c["type"], c.get("mode", "NULLABLE"), c["name"])) for c in columns]
    )
    rows = []
    for i, record in enumerate(records):
        row = {}
        for c in columns:
            key, mode = c["name"], c.get("mode", "NULLABLE")
            if key in record:
                row[key] = record[key]
            else:
                row[key] = _made_up(c["type"], mode, key, i)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)


def _index_rows(index_folder: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(index_folder / "idc_index.parquet").to_pylist()


def clinical_major(index_folder: Path) -> int:
    """int: the IDC version the folder's index is of (its latest release), which names the
    clinical folder ``idc_v{major}_clinical``."""
    import pyarrow.parquet as pq

    versions = pq.read_table(index_folder / "version_metadata_index.parquet")["idc_version"]
    return int(max(versions.to_pylist()))


def clinical_tables(index_folder: Path) -> dict[str, Any]:
    """The sample clinical tables of the folder's patients, by short table name
    (``dicom_patient_id`` among their columns, as IDC's)."""
    import pyarrow as pa

    patients: dict[str, list[str]] = {}
    for row in _index_rows(index_folder):
        ids = patients.setdefault(row["collection_id"], [])
        if row["PatientID"] not in ids:
            ids.append(row["PatientID"])
    tables = {}
    follow_up = []
    for collection, ids in sorted(patients.items()):
        tables[f"{collection}_clinical"] = pa.table(
            {
                "dicom_patient_id": pa.array(ids, pa.string()),
                "age_at_diagnosis": pa.array([40 + i for i in range(len(ids))], pa.int64()),
                "gender": pa.array(["F" if i % 2 else "M" for i in range(len(ids))], pa.string()),
                "source_batch": pa.array([collection] * len(ids), pa.string()),
            }
        )
        for i, patient in enumerate(ids):
            for visit in range(2):
                follow_up.append({"dicom_patient_id": patient, "visit": visit + 1,
                                  "days_from_diagnosis": 30 * (visit + 1) + i})
    tables["sample_follow_up"] = pa.Table.from_pylist(
        follow_up,
        schema=pa.schema([("dicom_patient_id", pa.string()), ("visit", pa.int64()),
                          ("days_from_diagnosis", pa.int64())]),
    )
    return tables


def _clinical_index_records(index_folder: Path) -> list[dict[str, Any]]:
    major = clinical_major(index_folder)
    tables = clinical_tables(index_folder)
    collections = sorted({t.removesuffix("_clinical") for t in tables if t.endswith("_clinical")})
    records = []
    for collection in collections:
        for short in (f"{collection}_clinical", "sample_follow_up"):
            for column in tables[short].column_names:
                values = sorted({str(v) for v in tables[short][column].to_pylist()})[:5]
                records.append(
                    {
                        "collection_id": collection,
                        "table_name": f"bigquery-public-data.idc_v{major}_clinical.{short}",
                        "short_table_name": short,
                        "column": column,
                        "column_label": column.replace("_", " "),
                        "values": [{"option_code": v, "option_description": v} for v in values],
                    }
                )
    return records


def table_records(name: str, index_folder: Path) -> list[dict[str, Any]]:
    """The rows of table ``name`` for the folder's series (before the made-up columns)."""
    if name == "clinical_index":
        return _clinical_index_records(index_folder)
    about = _ABOUT.get(name)
    rows = _index_rows(index_folder)
    if about is not None:
        rows = [r for r in rows if r["Modality"] in about]
    records = []
    for row in rows:
        record = dict(row)
        if name == "prior_versions_index":
            record.update(
                gcs_bucket=row["aws_bucket"],
                min_idc_version=row["series_init_idc_version"],
                max_idc_version=row["series_revised_idc_version"],
            )
        records.append(record)
    return records


def write_idc_tables(
    folder: str | Path, index_folder: str | Path, names: tuple[str, ...] = SUPPLEMENTARY
) -> Path:
    """Write IDC tables (``{name}.parquet``, real schema) for the series of ``index_folder``.

    Parameters
    ----------
    folder : path-like
        Where to write (created if needed); may be ``index_folder`` itself.
    index_folder : path-like
        A sample index folder (:func:`~intake_tcia.testing.write_idc_index`).
    names : tuple of str
        The tables (default: the supplementary ones); ``prior_versions_index`` too.

    Returns
    -------
    pathlib.Path
        ``folder``.
    """
    import pyarrow.parquet as pq

    folder, index_folder = Path(folder), Path(index_folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pq.write_table(_table(name, table_records(name, index_folder)), folder / f"{name}.parquet")
    return folder


def put_clinical_tables(bucket: Any, index_folder: str | Path) -> list[str]:
    """Put the sample clinical tables into ``bucket`` (an IDCBucketServer) as IDC keeps them:
    bucket ``idc-open-metadata``, readable anonymously; returns the keys."""
    import io

    import pyarrow.parquet as pq

    index_folder = Path(index_folder)
    s3 = bucket._s3()
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if CLINICAL_BUCKET not in existing:
        s3.create_bucket(Bucket=CLINICAL_BUCKET)
        resources = [f"arn:aws:s3:::{CLINICAL_BUCKET}", f"arn:aws:s3:::{CLINICAL_BUCKET}/*"]
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": resources}]}
        s3.put_bucket_policy(Bucket=CLINICAL_BUCKET, Policy=json.dumps(policy))
    prefix = f"bigquery_export/idc_v{clinical_major(index_folder)}_clinical"
    keys = []
    for short, table in clinical_tables(index_folder).items():
        half = max(table.num_rows // 2, 1)  # two files per table, as BigQuery exports shard
        for n, part in enumerate((table.slice(0, half), table.slice(half))):
            if part.num_rows == 0 and n:
                continue
            sink = io.BytesIO()
            pq.write_table(part, sink)
            key = f"{prefix}/{short}/{n:012d}.parquet"
            s3.put_object(Bucket=CLINICAL_BUCKET, Key=key, Body=sink.getvalue())
            keys.append(key)
    return keys


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: IDCTablesServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        owner = self.owner
        path = self.path.split("?")[0]
        with owner._lock:
            owner.requests.append(path)
        name = path.rsplit("/", 1)[-1].removesuffix(".parquet")
        if path == f"/release/{name}.parquet" and name in owner.served():
            self.send_response(302)  # as github.com/.../releases/download/ answers
            self.send_header("Location", f"/assets/{name}.parquet?token=sample")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = owner.body(name) if path == f"/assets/{name}.parquet" else None
        if body is None:
            body = b"Not Found"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class IDCTablesServer:
    """IDC's supplementary indices of a sample index folder, over loopback HTTP.

    Parameters
    ----------
    index_folder : path-like
        A sample index folder; its series fill the tables.

    Attributes
    ----------
    url : str
        The ``idc_index_url`` to give clients (``http://127.0.0.1:PORT/release/``).
    requests : list of str
        The paths asked for, oldest first.
    replaced : dict of str to bytes
        Bodies served instead of a table's file (a corrupt or wrongly shaped one).
    """

    def __init__(self, index_folder: str | Path) -> None:
        self.index_folder = Path(index_folder)
        self.requests: list[str] = []
        self.replaced: dict[str, bytes] = {}
        self._bodies: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._listener: ThreadingHTTPServer | None = None

    def served(self) -> tuple[str, ...]:
        """The tables served (the supplementary ones)."""
        return SUPPLEMENTARY

    def body(self, name: str) -> bytes | None:
        """The bytes served for a table (made on first use), or None for no such table."""
        import io

        import pyarrow.parquet as pq

        if name in self.replaced:
            return self.replaced[name]
        if name not in self.served():
            return None
        with self._lock:
            if name not in self._bodies:
                sink = io.BytesIO()
                pq.write_table(_table(name, table_records(name, self.index_folder)), sink)
                self._bodies[name] = sink.getvalue()
            return self._bodies[name]

    def start(self) -> IDCTablesServer:
        handler = type("_TablesHandler", (_Handler,), {"owner": self})
        self._listener = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._listener.daemon_threads = True
        threading.Thread(target=self._listener.serve_forever, kwargs={"poll_interval": 0.05},
                         name="intake-tcia-idc-tables", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.shutdown()
            self._listener.server_close()
        self._listener = None

    def __enter__(self) -> IDCTablesServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._listener is None:
            raise RuntimeError("the tables server is not running; call start() first")
        host, port = self._listener.server_address[:2]
        return f"http://{host}:{port}/release/"

    def count(self, name: str) -> int:
        """How many times ``{name}.parquet`` was asked for (the redirect, not the file)."""
        return sum(1 for p in self.requests if p == f"/release/{name}.parquet")

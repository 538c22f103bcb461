"""The sample archive's IDC history and mirrors: older copies of a few series, Google's buckets.

Real IDC keeps every release's objects, lists the earlier copies of series in
``prior_versions_index.parquet`` and mirrors its buckets on Google Cloud Storage, partly under
other names (``idc-open-data-two`` is ``idc-open-idc1`` there, ``idc-open-data-cr`` is
``idc-open-cr``). The sample archive does the same, deterministically from its own files:

* :func:`prior_series`: the series that have an older copy (two multi-instance CT series of
  the archive's first release). Each older object is the current file with (0020,4000) *Image
  Comments* set to :data:`PRIOR_COMMENT` (same SOPInstanceUID, other bytes), under
  ``<prior crdc_series_uuid>/<prior crdc_instance_uuid>.dcm`` in ``idc-open-data-two`` (AWS)
  and ``idc-open-idc1`` (GCS).
* :func:`cr_series`: one CR series kept in ``idc-open-data-cr`` (AWS) / ``idc-open-cr`` (GCS).
* :func:`removed_series`: one MR series IDC has since removed: the newest release lacks it, the
  ones before held it (its objects stay where they are, as IDC keeps them).
* :func:`upload_history` (called by :class:`~intake_tcia.testing.IDCBucketServer`): creates the
  AWS and GCS buckets and puts these objects there, next to ``idc-open-data``, which has the
  same name on both mirrors.
* :func:`write_history`: turns an index folder written by
  :func:`~intake_tcia.testing.write_idc_index` into one of a later release: the two series were
  revised in the newest release (their current rows say so), their older copies are listed in
  ``prior_versions_index.parquet`` for the releases before, the removed series is listed there
  only, and the CR series is listed in ``idc-open-data-cr``. The default index is left as NBIA
  has the series; tests that want the history write it into their own folder.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from .idc import crdc_series_uuid, object_key

if TYPE_CHECKING:
    from .builder import SampleArchive

__all__ = [
    "PRIOR_BUCKETS",
    "CR_BUCKETS",
    "PRIOR_COMMENT",
    "prior_series",
    "cr_series",
    "removed_series",
    "prior_crdc_series_uuid",
    "prior_object_key",
    "prior_objects",
    "upload_history",
    "write_history",
]

#: The AWS and GCS buckets of the older copies.
PRIOR_BUCKETS = ("idc-open-data-two", "idc-open-idc1")
#: The AWS and GCS buckets of the series kept in IDC's "cr" bucket.
CR_BUCKETS = ("idc-open-data-cr", "idc-open-cr")
#: Image Comments of every instance of an older copy.
PRIOR_COMMENT = "sample archive: the copy of an earlier IDC release"


def _first_release(archive: SampleArchive) -> list[dict[str, Any]]:
    table = archive.table
    first = min(table["DateReleased"].dropna(), key=lambda d: (d[6:], d[:2], d[3:5]))
    rows = table[table["DateReleased"] == first].sort_values("SeriesInstanceUID")
    return rows.to_dict("records")


def prior_series(archive: SampleArchive) -> list[str]:
    """list of str: the two series with an older copy (CT, several instances, first release)."""
    rows = [r for r in _first_release(archive) if r["Modality"] == "CT" and r["ImageCount"] > 1]
    return [r["SeriesInstanceUID"] for r in rows[:2]]


def cr_series(archive: SampleArchive) -> str | None:
    """str or None: the series kept in IDC's ``cr`` buckets (the first CR series by UID)."""
    rows = archive.table[archive.table["Modality"] == "CR"].sort_values("SeriesInstanceUID")
    return None if rows.empty else str(rows["SeriesInstanceUID"].iloc[0])


def removed_series(archive: SampleArchive) -> str:
    """str: the series the newest release no longer lists (an MR series of the first one)."""
    return [r["SeriesInstanceUID"] for r in _first_release(archive) if r["Modality"] == "MR"][0]


def _prior_row(row: dict[str, Any], crdc: str, buckets: tuple[str, str], first: int,
               last: int) -> dict[str, Any]:
    """A prior_versions_index row of the series of index row ``row``."""
    return {"collection_id": row["collection_id"], "PatientID": row["PatientID"],
            "SeriesInstanceUID": row["SeriesInstanceUID"],
            "StudyInstanceUID": row["StudyInstanceUID"], "Modality": row["Modality"],
            "gcs_bucket": buckets[1], "crdc_series_uuid": crdc,
            "series_size_MB": row["series_size_MB"],
            "series_aws_url": f"s3://{buckets[0]}/{crdc}/*", "aws_bucket": buckets[0],
            "min_idc_version": first, "max_idc_version": last}


def prior_crdc_series_uuid(series_uid: str) -> str:
    """str: the CRDC UUID of a series' older copy."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, series_uid + "@prior"))


def prior_object_key(series_uid: str, sop_instance_uid: str) -> str:
    """str: the key of one instance's older copy."""
    instance = uuid.uuid5(uuid.NAMESPACE_OID, sop_instance_uid + "@prior")
    return f"{prior_crdc_series_uuid(series_uid)}/{instance}.dcm"


def prior_objects(archive: SampleArchive) -> dict[str, bytes]:
    """dict of key to bytes: every object of the older copies."""
    objects = {}
    for uid in prior_series(archive):
        for sop, path in archive.instances(uid):
            ds = pydicom.dcmread(path)
            ds.ImageComments = PRIOR_COMMENT
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            objects[prior_object_key(uid, sop)] = out.getvalue()
    return objects


def _public(s3: Any, bucket: str) -> None:
    s3.create_bucket(Bucket=bucket)
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def upload_history(server: Any) -> dict[str, str]:
    """Create the other buckets in the moto of ``server`` (an
    :class:`~intake_tcia.testing.IDCBucketServer`, which calls this when it starts) and put the
    older copies and the ``cr`` series there; returns crdc_series_uuid -> SeriesInstanceUID of
    what it put (for faults)."""
    s3 = server._s3()
    archive = server.archive
    for bucket in PRIOR_BUCKETS + CR_BUCKETS:
        _public(s3, bucket)
    for key, data in prior_objects(archive).items():
        for bucket in PRIOR_BUCKETS:
            s3.put_object(Bucket=bucket, Key=key, Body=data)
    named = {prior_crdc_series_uuid(uid): uid for uid in prior_series(archive)}
    cr = cr_series(archive)
    if cr is not None:
        for sop, path in archive.instances(cr):
            for bucket in CR_BUCKETS:
                s3.put_object(Bucket=bucket, Key=object_key(cr, sop), Body=path.read_bytes())
    return named


def write_history(folder: str | Path, archive: SampleArchive) -> Path:
    """Rewrite the index folder ``folder`` (from :func:`write_idc_index`) with the archive's
    IDC history (see the module docstring); returns ``folder``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    index = pq.read_table(folder / "idc_index.parquet")
    newest = max(pq.read_table(folder / "version_metadata_index.parquet")["idc_version"]
                 .to_pylist())
    prior = set(prior_series(archive))
    cr = cr_series(archive)
    removed = removed_series(archive)
    rows = []
    history = []
    for row in index.to_pylist():
        uid = row["SeriesInstanceUID"]
        if uid == removed:
            history.append(_prior_row(row, crdc_series_uuid(uid), ("idc-open-data",) * 2,
                                      row["series_init_idc_version"], newest - 1))
            continue
        rows.append(row)
        if uid == cr:
            row["aws_bucket"] = CR_BUCKETS[0]
            row["series_aws_url"] = f"s3://{CR_BUCKETS[0]}/{crdc_series_uuid(uid)}/*"
        if uid in prior and row["series_init_idc_version"] < newest:
            row["series_revised_idc_version"] = newest
            history.append(_prior_row(row, prior_crdc_series_uuid(uid), PRIOR_BUCKETS,
                                      row["series_init_idc_version"], newest - 1))
    pq.write_table(pa.Table.from_pylist(rows, schema=index.schema), folder / "idc_index.parquet")
    text = pa.large_string()
    schema = pa.schema([(n, text) for n in ("collection_id", "PatientID", "SeriesInstanceUID",
                                             "StudyInstanceUID", "Modality", "gcs_bucket",
                                             "crdc_series_uuid")]
                       + [("series_size_MB", pa.float64()), ("series_aws_url", text),
                          ("aws_bucket", text), ("min_idc_version", pa.int64()),
                          ("max_idc_version", pa.int64())])
    pq.write_table(pa.Table.from_pylist(history, schema=schema),
                   folder / "prior_versions_index.parquet")
    return folder

"""The sample archive the IDC way: how its series are named in the bucket and in the index.

Real IDC names every series and instance by a CRDC UUID; the sample archive derives them from
the DICOM UIDs, so the bucket and the index it writes agree without sharing state.
"""

from __future__ import annotations

import uuid

__all__ = ["BUCKET", "crdc_series_uuid", "crdc_instance_uuid", "object_key", "series_aws_url"]

#: The bucket the sample archive's objects live in, as IDC's public open-data bucket.
BUCKET = "idc-open-data"


def crdc_series_uuid(series_instance_uid: str) -> str:
    """str: the CRDC UUID standing for a series in the sample archive."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, series_instance_uid))


def crdc_instance_uuid(sop_instance_uid: str) -> str:
    """str: the CRDC UUID standing for an instance in the sample archive."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, sop_instance_uid))


def object_key(series_instance_uid: str, sop_instance_uid: str) -> str:
    """str: the key of one instance, ``<crdc_series_uuid>/<crdc_instance_uuid>.dcm``."""
    return f"{crdc_series_uuid(series_instance_uid)}/{crdc_instance_uuid(sop_instance_uid)}.dcm"


def series_aws_url(series_instance_uid: str, bucket: str = BUCKET) -> str:
    """str: the index's ``series_aws_url`` of a series, ``s3://<bucket>/<crdc_series_uuid>/*``."""
    return f"s3://{bucket}/{crdc_series_uuid(series_instance_uid)}/*"

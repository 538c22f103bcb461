"""Where IDC keeps a series, as URLs others can use: object URLs, s5cmd manifests, viewer links.

IDC's objects are mirrored on Amazon S3 and on Google Cloud Storage, partly under other bucket
names there (:data:`GCS_BUCKETS`, the mapping idc-index uses too); the keys are the same
(``<crdc_series_uuid>/<crdc_instance_uuid>.dcm``). :func:`mirror_bucket` names a bucket on either
mirror; :func:`endpoint` is the HTTPS endpoint of one.

* :func:`urls`: one row per instance, its ``s3://`` URL and its ``https://`` URL on the endpoint;
  SOPInstanceUIDs where a kept listing or the cache knows them (nothing is downloaded for them).
* :func:`write_s5cmd_manifest`: ``cp`` lines, one folder per series, from the index alone (no
  request): ``s5cmd --no-sign-request --endpoint-url ENDPOINT run MANIFEST`` in the folder to
  fill.
* :func:`viewer_url`: IDC's OHIF v3 viewer for radiology, its Slim viewer for a study that holds
  slide microscopy (``SM``), in the URL forms of idc-index's ``get_viewer_URL``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .._lazy import pandas as pd
from ..config import DEFAULT_IDC_URL, GCS_IDC_URL, IDC_MIRRORS
from . import bucket as objects_of
from .versions import not_listed

if TYPE_CHECKING:
    from ..config import Settings
    from .bucket import IDCLocation

__all__ = [
    "GCS_BUCKETS",
    "MIRROR_URLS",
    "VIEWER_URL",
    "URL_COLUMNS",
    "mirror_bucket",
    "endpoint",
    "check_mirror",
    "located",
    "urls",
    "s5cmd_lines",
    "write_s5cmd_manifest",
    "viewer_url",
]

#: AWS bucket -> its name on Google Cloud Storage (idc-open-data keeps its name).
GCS_BUCKETS = {
    "idc-open-data": "idc-open-data",
    "idc-open-data-two": "idc-open-idc1",
    "idc-open-data-cr": "idc-open-cr",
}
_AWS_BUCKETS = {gcs: aws for aws, gcs in GCS_BUCKETS.items()}
#: The public endpoint of each mirror.
MIRROR_URLS = {"aws": DEFAULT_IDC_URL, "gcs": GCS_IDC_URL}
#: IDC's viewers.
VIEWER_URL = "https://viewer.imaging.datacommons.cancer.gov"
#: The columns of :func:`urls`.
URL_COLUMNS = ["SeriesInstanceUID", "SOPInstanceUID", "s3_url", "https_url"]


def check_mirror(mirror: Any) -> str:
    """``"aws"`` or ``"gcs"`` (case-insensitive), else ValueError."""
    text = str(mirror).strip().lower()
    if text not in IDC_MIRRORS:
        raise ValueError(f"mirror must be one of {', '.join(IDC_MIRRORS)}, not {mirror!r}")
    return text


def mirror_bucket(bucket: str, mirror: str) -> str:
    """str: the name ``bucket`` (an AWS or a GCS name) has on ``mirror``; other names are kept."""
    if mirror == "gcs":
        return GCS_BUCKETS.get(bucket, bucket)
    return _AWS_BUCKETS.get(bucket, bucket)


def endpoint(settings: Settings, mirror: str | None = None) -> str:
    """str: the endpoint (ending in ``/``) of ``mirror``: ``settings.idc_url`` for the
    configured mirror, the other mirror's public endpoint otherwise."""
    if mirror is None or mirror == settings.idc_mirror:
        return settings.idc_url
    return MIRROR_URLS[mirror]


def _known_sops(idc: Any, uid: str, prefix: str) -> dict[str, str]:
    """Object name -> SOPInstanceUID, from the kept listing or the cached series (no request)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        where, listed = objects_of._saved_listing(idc, uid)
        if where.prefix == prefix:
            return {o.name: o.sop_instance_uid for o in listed if o.sop_instance_uid}
    cached = idc.cache.get(uid)
    if cached is None:
        return {}
    return {i.name: i.sop_instance_uid for i in cached.instances}


def urls(idc: Any, series_uids: list[str], mirror: str | None = None) -> pd.DataFrame:
    """One row per instance of each series (listed from the bucket, in key order).

    Parameters
    ----------
    idc : IDCBackend
        The client's IDC backend: its index, transport, cache and settings (``idc_mirror``,
        ``idc_url``, ``idc_version``).
    series_uids : list of str
        Validated SeriesInstanceUIDs.
    mirror : {"aws", "gcs"}, optional
        Whose bucket names and endpoint the URLs name (default: ``settings.idc_mirror``).

    Returns
    -------
    pandas.DataFrame
        :data:`URL_COLUMNS`; ``SOPInstanceUID`` null where no kept listing or cached series
        says which instance an object holds.

    Raises
    ------
    TCIANotFoundError
        Naming the series the index (at ``idc_version``) does not list, before any request.
    """
    mirror = idc.settings.idc_mirror if mirror is None else check_mirror(mirror)
    found = located(idc, series_uids)
    base = endpoint(idc.settings, mirror)
    rows = []
    for uid in series_uids:
        where = found[uid]
        bucket = mirror_bucket(where.bucket, mirror)
        sops = _known_sops(idc, uid, where.prefix)
        for obj in objects_of.list_objects(idc, where):
            rows.append((uid, sops.get(obj.name), f"s3://{bucket}/{obj.key}",
                         f"{base}{quote(bucket)}/{quote(obj.key)}"))
    frame = pd.DataFrame(rows, columns=URL_COLUMNS)
    return frame.astype({c: "string" for c in URL_COLUMNS})


def located(idc: Any, series_uids: list[str]) -> dict[str, IDCLocation]:
    """The series' locations (at the client's release, on its mirror); a TCIANotFoundError
    naming every series the index, or that release, does not list."""
    idc.locate(series_uids)
    missing = [u for u in series_uids if idc.find(u) is None]
    if missing:
        raise not_listed(idc, missing)
    return {u: idc.find(u) for u in series_uids}


def s5cmd_lines(idc: Any, series_uids: list[str],
                mirror: str | None = None) -> list[str]:
    """The ``cp`` lines of an s5cmd manifest: every object of a series into a folder named
    after its SeriesInstanceUID, relative to where s5cmd runs. No request (the index says
    where each series is)."""
    mirror = idc.settings.idc_mirror if mirror is None else check_mirror(mirror)
    found = located(idc, series_uids)
    return [f"cp s3://{mirror_bucket(found[u].bucket, mirror)}/{found[u].prefix}* {u}/"
            for u in series_uids]


def write_s5cmd_manifest(idc: Any, series_uids: list[str], path: str | os.PathLike[str],
                         mirror: str | None = None) -> Path:
    """Write :func:`s5cmd_lines` to ``path``; the path written."""
    target = Path(path)
    target.write_text("".join(line + "\n" for line in s5cmd_lines(idc, series_uids, mirror)),
                      encoding="utf-8")
    return target


def viewer_url(idc: Any, uid: str) -> str:
    """IDC's viewer URL of a series or a study (either UID), chosen by the study's modalities:
    Slim when it holds slide microscopy (SM), OHIF v3 otherwise.

    Raises
    ------
    TCIANotFoundError
        The index (or, with an older ``idc_version``, that release) lists no such series or
        study.
    """
    from .versions import study_rows

    study, series, modalities = study_rows(idc, uid)
    if "SM" in modalities:
        tail = f"/series/{series}" if series else ""
        return f"{VIEWER_URL}/slim/studies/{study}{tail}"
    tail = f"&initialSeriesInstanceUID={series}" if series else ""
    return f"{VIEWER_URL}/v3/viewer/?StudyInstanceUIDs={study}{tail}"

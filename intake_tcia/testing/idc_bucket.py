"""The sample archive the IDC way: its DICOM in a loopback S3 bucket, under IDC's keys.

A moto ``ThreadedMotoServer`` holds bucket ``idc-open-data`` (anonymous ListObjectsV2 and GET
allowed by a bucket policy, as IDC's public buckets), one object per instance at
``<crdc_series_uuid>/<crdc_instance_uuid>.dcm`` (:mod:`intake_tcia.testing.idc`), and the
buckets of :mod:`intake_tcia.testing.idc_releases` (older copies of a few series, a series in
IDC's ``cr`` bucket, each under its AWS and its Google Cloud Storage name). Clients talk
to a small HTTP/1.1 front (keep-alive, as S3) that forwards each read to moto and injects the
faults of its :class:`S3FaultPlan`, a latency and a per-connection bandwidth cap, the same way
:class:`~intake_tcia.testing.ArchiveServer` does for NBIA. The front is read-only: writes are
refused with S3's ``AccessDenied``.

S3 fault kinds (``server.faults.add(kind, endpoint=..., series=..., times=..., **params)``;
endpoints ``"ListObjectsV2"``, ``"GetObject"``, ``"HeadObject"``; ``series`` a
SeriesInstanceUID):

==============  ================================================================================
kind            effect (parameters)
==============  ================================================================================
``status``      an S3 XML error (``code`` = 503 ``SlowDown``; 500 ``InternalError``, 403
                ``AccessDenied``, 404 ``NoSuchKey``), ``Retry-After`` when ``retry_after``
``reset``       the connection is reset after ``after_bytes`` of the body (default: half)
``truncate``    GetObject: the body stops after ``after_bytes`` (default half), then a clean close
                (Content-Length promised the whole object)
``alter``       GetObject: byte ``offset`` (default: the middle) is changed, same length and ETag
``hang``        nothing is sent for ``seconds`` (= 5), then the connection closes
==============  ================================================================================

>>> with IDCBucketServer() as bucket:                       # doctest: +SKIP
...     TCIAClient(backend="idc", idc_url=bucket.url, ...)
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit
from xml.sax.saxutils import escape

from .builder import SampleArchive
from .faults import Fault, FaultPlan
from .idc import BUCKET, crdc_series_uuid, object_key
from .server import RequestRecord, _BodyWriter, _Gone, _Handler, _Listener

__all__ = ["IDCBucketServer", "S3FaultPlan", "S3_KINDS", "S3_ENDPOINTS"]

S3_KINDS = ("status", "reset", "truncate", "alter", "hang")
S3_ENDPOINTS = ("ListObjectsV2", "GetObject", "HeadObject")
_S3_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "SlowDown"}
_S3_MESSAGES = {
    "AccessDenied": "Access Denied",
    "NoSuchKey": "The specified key does not exist.",
    "InternalError": "We encountered an internal error. Please try again.",
    "SlowDown": "Please reduce your request rate.",
}
_FORWARDED = ("Content-Type", "Content-Length", "Content-Range", "ETag", "Last-Modified",
              "Accept-Ranges", "x-amz-request-id", "x-amzn-requestid")
_UPLOAD_WORKERS = 8


class S3FaultPlan(FaultPlan):
    """The faults the bucket injects: :data:`S3_KINDS` (see the module docstring)."""

    kinds = S3_KINDS
    only_on = {"truncate": ("GetObject",), "alter": ("GetObject",)}


def _s3_error(code: int, key: str = "") -> bytes:
    name = _S3_CODES.get(code, "InternalError")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{name}</Code>'
            f"<Message>{_S3_MESSAGES[name]}</Message><Key>{escape(key)}</Key>"
            "<RequestId>SAMPLEARCHIVE</RequestId></Error>").encode()


class _S3Handler(_Handler):
    """Answers S3 reads by forwarding them to moto (``owner`` is the IDCBucketServer)."""

    server_version = "AmazonS3"
    owner: IDCBucketServer

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._handle("HEAD")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: ",".join(v) for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        bucket, _, key = unquote(url.path).lstrip("/").partition("/")
        endpoint = {"HEAD": "HeadObject", "GET": "GetObject" if key else "ListObjectsV2"}.get(
            method, method)
        params = dict(query, bucket=bucket, key=key)
        if self.headers.get("Range"):
            params["range"] = self.headers["Range"]
        record = self.owner._log(RequestRecord("s3", method, endpoint, params))
        if int(self.headers.get("Content-Length") or 0):
            self.rfile.read(int(self.headers["Content-Length"]))
        if endpoint not in S3_ENDPOINTS:
            self._send_bytes(record, 403, _s3_error(403, key), "application/xml")
            return
        prefix = key or query.get("prefix", "")
        fault = self.owner.faults.take("s3", endpoint, self.owner._series_of(prefix))
        if self.owner.faults.latency:
            time.sleep(self.owner.faults.latency)
        try:
            if fault is not None and self._s3_early_fault(record, fault, key):
                return
            self._forward(record, method, url.path, query, fault)
        except _Gone:
            self.close_connection = True

    def _s3_early_fault(self, record: RequestRecord, fault: Fault, key: str) -> bool:
        if fault.kind == "status":
            code = int(fault.params.get("code", 503))
            headers = {}
            if fault.params.get("retry_after") is not None:
                headers["Retry-After"] = str(fault.params["retry_after"])
            self._send_bytes(record, code, _s3_error(code, key), "application/xml", headers)
        elif fault.kind == "hang":
            self.owner._stopping.wait(float(fault.params.get("seconds", 5)))
            self.close_connection = True
        else:
            return False
        return True

    def _forward(self, record: RequestRecord, method: str, path: str, query: dict[str, str],
                 fault: Fault | None) -> None:
        if "max-keys" in query or "list-type" in query:
            asked = int(query.get("max-keys") or 1000)
            query["max-keys"] = str(max(1, min(asked, self.owner.max_keys)))
        target = path + ("?" + urlencode(query) if query else "")
        headers = {"Range": self.headers["Range"]} if self.headers.get("Range") else {}
        status, answer_headers, body = self.owner._ask_moto(method, target, headers)
        if fault is not None and fault.kind == "alter" and body:
            at = int(fault.params.get("offset", len(body) // 2)) % len(body)
            body = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1:]
        record.status = status
        self.send_response(status)
        for name in _FORWARDED:
            if answer_headers.get(name) is not None:
                self.send_header(name, answer_headers[name])
        self.end_headers()
        if method == "HEAD":
            return
        cut = None
        if fault is not None and fault.kind in ("reset", "truncate"):
            cut = int(fault.params.get("after_bytes", max(len(body) // 2, 1)))
        writer = _BodyWriter(self, record, chunked=False, bandwidth=self.owner.faults.bandwidth,
                             cut_after=cut)
        writer.write(body)
        if fault is not None and fault.kind == "truncate":
            writer.finish()
            self.close_connection = True
            return
        self._end(writer, fault)


class IDCBucketServer:
    """The sample archive's instances in a loopback S3 bucket, as IDC serves them.

    Parameters
    ----------
    archive : SampleArchive, optional
        What to serve; :meth:`SampleArchive.default` when omitted. Series added to it later
        are uploaded by :meth:`sync`.
    host : str
        Interface to listen on.
    port : int
        Port of the S3 front (0: a free port).
    verbose : bool
        Log each request to stderr.

    Attributes
    ----------
    faults : S3FaultPlan
        Faults, latency and bandwidth cap applied by the front.
    max_keys : int
        The most keys one ListObjectsV2 page holds (S3's 1000; lower it to test paging).
    bucket : str
        ``idc-open-data``.
    """

    def __init__(self, archive: SampleArchive | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, verbose: bool = False) -> None:
        self.archive = archive if archive is not None else SampleArchive.default()
        self.faults = S3FaultPlan()
        self.max_keys = 1000
        self.bucket = BUCKET
        self.verbose = verbose
        self._address = (host, port)
        self._moto: Any = None
        self._moto_address: tuple[str, int] | None = None
        self._listener: _Listener | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._log_lock = threading.Lock()
        self._log_records: list[RequestRecord] = []
        self._uploaded: dict[str, str] = {}  # crdc_series_uuid -> SeriesInstanceUID
        self._sync_lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> IDCBucketServer:
        """Start moto and the S3 front, create the bucket and upload the archive; returns self."""
        if self._listener is not None:
            return self
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log lines
        self._stopping.clear()
        self._moto = ThreadedMotoServer(self._address[0], 0, verbose=False)
        self._moto.start()
        self._moto_address = self._moto.get_host_and_port()
        handler = type("_BucketHandler", (_S3Handler,), {"owner": self, "host": "s3"})
        self._listener = _Listener(self._address, handler)
        self._thread = threading.Thread(target=self._listener.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="intake-tcia-s3", daemon=True)
        self._thread.start()
        self._create_bucket()
        self.sync()
        from .idc_releases import upload_history

        self._uploaded.update(upload_history(self))  # older copies; Google's bucket names
        return self

    def stop(self) -> None:
        """Stop the front and moto."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.shutdown()
            self._listener.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
        if self._moto is not None:
            self._moto.stop()
        self._listener = self._thread = self._moto = None
        self._uploaded.clear()

    def __enter__(self) -> IDCBucketServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._listener is None:
            return "IDCBucketServer(stopped)"
        return f"IDCBucketServer(url={self.url!r}, bucket={self.bucket!r})"

    # -- contents ----------------------------------------------------------------------------
    def _s3(self) -> Any:
        import boto3
        from botocore.config import Config

        host, port = self._moto_address or ("", 0)
        return boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                            aws_access_key_id="sample", aws_secret_access_key="archive",
                            config=Config(max_pool_connections=_UPLOAD_WORKERS))

    def _create_bucket(self) -> None:
        s3 = self._s3()
        s3.create_bucket(Bucket=self.bucket)
        resources = [f"arn:aws:s3:::{self.bucket}", f"arn:aws:s3:::{self.bucket}/*"]
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": resources}]}
        s3.put_bucket_policy(Bucket=self.bucket, Policy=json.dumps(policy))

    def sync(self) -> int:
        """Upload the archive's series not yet in the bucket; returns how many objects."""
        with self._sync_lock:
            todo = []
            for uid in self.archive.series_uids():
                if crdc_series_uuid(uid) in self._uploaded:
                    continue
                todo += [(object_key(uid, sop), path) for sop, path in self.archive.instances(uid)]
                self._uploaded[crdc_series_uuid(uid)] = uid
            if todo:
                s3 = self._s3()

                def put(item: tuple[str, Any]) -> None:
                    s3.put_object(Bucket=self.bucket, Key=item[0], Body=item[1].read_bytes())

                with ThreadPoolExecutor(_UPLOAD_WORKERS) as pool:
                    list(pool.map(put, todo))
            return len(todo)

    def keys(self, series_uid: str) -> list[str]:
        """list of str: the object keys of a series' instances, in the archive's order."""
        return [object_key(series_uid, sop) for sop, _ in self.archive.instances(series_uid)]

    def _series_of(self, key_or_prefix: str) -> str | None:
        return self._uploaded.get(key_or_prefix.partition("/")[0])

    def _ask_moto(self, method: str, target: str,
                  headers: dict[str, str]) -> tuple[int, Any, bytes]:
        """Status, headers (case-insensitive) and body of moto's answer."""
        host, port = self._moto_address or ("", 0)
        connection = http.client.HTTPConnection(host, port, timeout=60)
        try:
            connection.request(method, target, headers=headers)
            response = connection.getresponse()
            body = response.read()
            return response.status, response.msg, body
        finally:
            connection.close()

    # -- addresses ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """str: the S3 endpoint ``http://127.0.0.1:PORT/`` (path style: ``{url}{bucket}/{key}``)."""
        if self._listener is None:
            raise RuntimeError("the bucket server is not running; call start() first")
        host, port = self._listener.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def environ(self) -> dict[str, str]:
        """dict of str to str: the ``INTAKE_TCIA_IDC_URL`` setting that points clients here."""
        return {"INTAKE_TCIA_IDC_URL": self.url}

    # -- request log -------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        """list of RequestRecord: the requests the front received, oldest first (a copy)."""
        with self._log_lock:
            return list(self._log_records)

    def count(self, endpoint: str | None = None) -> int:
        """Number of requests received, optionally for one endpoint (``"GetObject"``, ...)."""
        return sum(1 for r in self.requests if endpoint in (None, r.endpoint))

    def clear_log(self) -> None:
        """Forget the requests received."""
        with self._log_lock:
            self._log_records.clear()

    def reset(self) -> None:
        """Clear the faults, the page size and the request log."""
        self.faults.clear()
        self.max_keys = 1000
        self.clear_log()

    def _log(self, record: RequestRecord) -> RequestRecord:
        with self._log_lock:
            self._log_records.append(record)
        return record

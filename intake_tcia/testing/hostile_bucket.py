"""A hostile S3-like bucket on loopback: ListObjectsV2 and GetObject answers that lie, never end,
or hold what no archive should publish.

:class:`HostileBucket` is a small HTTP/1.1 server of its own (no moto): each object is a
:class:`HostileObject` (its bytes, the size and ETag the listing gives, how its body is sent) and
each series prefix may have a listing mode. Everything it sends is counted (``sent_bytes``), so a
test can tell how far a client let an attack go.

Listing modes (``bucket.listing[prefix] = (mode, params)``):

==============  ================================================================================
mode            answer
==============  ================================================================================
``endless``     every page holds ``per_page`` (= 1) new keys, IsTruncated true and a new token,
                forever
``huge``        one page streaming ``keys`` (= 10,000,000) keys, chunk by chunk
``status``      an S3 XML error (``code`` = 503 SlowDown, ``Retry-After: 0``)
``entity``      a page declaring an internal entity (``<!DOCTYPE ...>``): a billion-laughs start
==============  ================================================================================

Object body modes (``HostileObject.mode``):

==============  ================================================================================
mode            body
==============  ================================================================================
``plain``       the bytes (ranges honoured)
``endless``     the bytes, then zeros without end (Content-Length says ``size``)
``gzip``        ``Content-Encoding: gzip`` of the bytes (a bomb when they are zeros)
``trickle``     the bytes, ``rate`` (= 10) bytes a second
``status``      an S3 XML error (``code`` = 503 SlowDown)
==============  ================================================================================
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from ._loopback import LoopbackServer
from .idc import BUCKET, object_key

__all__ = ["HostileBucket", "HostileObject", "gzip_bomb", "dicom_stub"]

_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_ZEROS = bytes(1 << 16)


@dataclass
class HostileObject:
    """One object: ``body`` as stored, ``size`` and ``etag`` as listed (default: the body's
    length and MD5), ``mode`` how the body is sent, ``params`` the mode's parameters."""

    body: bytes
    size: int | None = None
    etag: str | None = None
    mode: str = "plain"
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def listed_size(self) -> int:
        """int: the size the listing gives."""
        return len(self.body) if self.size is None else self.size

    @property
    def listed_etag(self) -> str:
        """str: the ETag the listing and GET give (quoted)."""
        return f'"{self.etag or hashlib.md5(self.body, usedforsecurity=False).hexdigest()}"'


def gzip_bomb(inflated: int) -> bytes:
    """``inflated`` zeros, gzip-compressed (about a thousandth of that)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    block = bytes(1 << 20)
    out = bytearray()
    for at in range(0, inflated, len(block)):
        out += packer.compress(block[: min(inflated - at, len(block))])
    return bytes(out + packer.flush())


def dicom_stub(meta_only: bytes | None = None) -> bytes:
    """A 132-byte preamble + ``DICM``; with ``meta_only`` (a whole DICOM file), that file cut
    right after its file meta group (no dataset)."""
    if meta_only is None:
        return bytes(128) + b"DICM"
    length = int.from_bytes(meta_only[140:144], "little")  # (0002,0000) group length, UL
    return meta_only[: 144 + length]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AmazonS3"
    owner: HostileBucket

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        bucket, _, key = unquote(url.path).lstrip("/").partition("/")
        endpoint = "GetObject" if key else "ListObjectsV2"
        self.owner._log(endpoint, key or query.get("prefix", ""), self.headers.get("Range"))
        try:
            if bucket != self.owner.bucket:
                self._error(404, "NoSuchBucket")
            elif key:
                self._object(key)
            else:
                self._list(query)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    # -- sending -----------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.owner._stopping.is_set():
            raise BrokenPipeError
        self.wfile.write(data)
        self.owner._count(len(data))

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _error(self, status: int, code: str) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                "<Message>hostile</Message></Error>").encode()
        self._head(status, {"Content-Type": "application/xml", "Content-Length": str(len(body)),
                            "Retry-After": "0"})
        self._write(body)

    def _chunk(self, data: bytes) -> None:
        self._write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    # -- ListObjectsV2 -----------------------------------------------------------------------
    def _list(self, query: dict[str, str]) -> None:
        prefix = query.get("prefix", "")
        mode, params = self.owner.listing.get(prefix, ("plain", {}))
        if mode == "status":
            self._error(int(params.get("code", 503)), "SlowDown")
            return
        self._head(200, {"Content-Type": "application/xml", "Transfer-Encoding": "chunked"})
        self._chunk(b'<?xml version="1.0" encoding="UTF-8"?>\n')
        if mode == "entity":
            self._chunk(b'<!DOCTYPE lolz [<!ENTITY lol "lollollollollollollollollol">]>')
        self._chunk(f'<ListBucketResult xmlns="{_NS}"><Name>{self.owner.bucket}</Name>'
                    f"<Prefix>{escape(prefix)}</Prefix>".encode())
        if mode == "endless":
            page = int(query.get("continuation-token", "0") or 0)
            per = int(params.get("per_page", 1))
            for i in range(per):
                self._chunk(_contents(f"{prefix}{page:09d}-{i:04d}.dcm", 1000, '"x"'))
            self._chunk(f"<IsTruncated>true</IsTruncated>"
                        f"<NextContinuationToken>{page + 1}</NextContinuationToken>".encode())
        elif mode == "huge":
            batch = b"".join(_contents(f"{prefix}{i:012d}.dcm", 1000, '"x"') for i in range(1000))
            for _ in range(int(params.get("keys", 10_000_000)) // 1000):
                self._chunk(batch)
            self._chunk(b"<IsTruncated>false</IsTruncated>")
        else:
            for key in sorted(self.owner.objects):
                if key.startswith(prefix):
                    obj = self.owner.objects[key]
                    self._chunk(_contents(key, obj.listed_size, obj.listed_etag))
            self._chunk(b"<IsTruncated>false</IsTruncated>")
        self._chunk(b"</ListBucketResult>")
        self._write(b"0\r\n\r\n")

    # -- GetObject ---------------------------------------------------------------------------
    def _object(self, key: str) -> None:
        obj = self.owner.objects.get(key)
        if obj is None:
            self._error(404, "NoSuchKey")
            return
        if obj.mode == "status":
            self._error(int(obj.params.get("code", 503)), "SlowDown")
            return
        headers = {"Content-Type": "application/dicom", "ETag": obj.listed_etag}
        if obj.mode == "gzip":
            packed = obj.params.get("packed") or gzip.compress(obj.body)
            headers.update({"Content-Encoding": "gzip", "Content-Length": str(len(packed))})
            self._head(200, headers)
            for at in range(0, len(packed), 1 << 16):
                self._write(packed[at : at + (1 << 16)])
            return
        start, end = 0, obj.listed_size - 1
        asked = self.headers.get("Range")
        if asked and asked.startswith("bytes="):
            first, _, last = asked[6:].partition("-")
            start, end = int(first), min(int(last or end), end)
        headers["Content-Length"] = str(end - start + 1)
        status = 200
        if asked:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{obj.listed_size}"
        self._head(status, headers)
        body = obj.body[start : end + 1]
        step, pause = 1 << 16, 0.0
        if obj.mode == "trickle":
            step, pause = 1, 1 / float(obj.params.get("rate", 10))
        for at in range(0, len(body), step):
            self._write(body[at : at + step])
            if pause:
                self.wfile.flush()
                time.sleep(pause)
        if obj.mode == "endless":
            sent = len(body)
            while sent < end - start + 1:
                self._write(_ZEROS)
                sent += len(_ZEROS)
        elif len(body) < end - start + 1:
            self.close_connection = True  # listed larger than held: the body stops short


def _contents(key: str, size: int, etag: str) -> bytes:
    key = escape(key, {"\n": "&#10;", "\r": "&#13;"})  # as S3 sends them
    return (f"<Contents><Key>{key}</Key><LastModified>2024-01-01T00:00:00.000Z"
            f"</LastModified><ETag>{escape(etag)}</ETag><Size>{size}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>").encode()


class HostileBucket(LoopbackServer):
    """A loopback S3-like bucket (path style, anonymous) whose answers a test makes hostile.

    Attributes
    ----------
    objects : dict of str to HostileObject
        The bucket's objects by key.
    listing : dict of str to (str, dict)
        Listing modes by prefix (see the module docstring).
    sent_bytes : int
        Bytes sent so far, headers left out.
    """

    def __init__(self, bucket: str = BUCKET, host: str = "127.0.0.1") -> None:
        self.bucket = bucket
        self.objects: dict[str, HostileObject] = {}
        self.listing: dict[str, tuple[str, dict[str, Any]]] = {}
        self.sent_bytes = 0
        self._requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        super().__init__(_Handler, host, "intake-tcia-hostile-bucket")

    @property
    def url(self) -> str:
        """str: the endpoint, ``http://127.0.0.1:PORT/``."""
        return self.address + "/"

    def put_series(self, series_uid: str, files: list[tuple[str, Path]]) -> list[str]:
        """Store a series' files (``(SOPInstanceUID, path)``) under IDC's keys; their keys."""
        keys = []
        for sop, path in files:
            keys.append(object_key(series_uid, sop))
            self.objects[keys[-1]] = HostileObject(Path(path).read_bytes())
        return keys

    def reset(self) -> None:
        """Forget objects, listing modes, the request log and the byte count."""
        self.objects.clear()
        self.listing.clear()
        with self._lock:
            self._requests.clear()
            self.sent_bytes = 0

    def count(self, endpoint: str | None = None) -> int:
        """Requests received, optionally of one endpoint (``"ListObjectsV2"``, ``"GetObject"``)."""
        with self._lock:
            return sum(1 for r in self._requests if endpoint in (None, r[0]))

    def _log(self, endpoint: str, target: str, range_: str | None) -> None:
        with self._lock:
            self._requests.append((endpoint, target, range_))

    def _count(self, n: int) -> None:
        with self._lock:
            self.sent_bytes += n

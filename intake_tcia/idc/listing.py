"""The objects of one IDC series: ListObjectsV2 of its prefix, bounded and parsed as it streams.

A listing is an answer like any other, and may be hostile: it may never end (IsTruncated with a
new token forever), stream millions of keys in one page, declare XML entities, or name keys no
file may have. So each page is parsed while it arrives (expat, with DOCTYPE and entity
declarations refused, as defusedxml does), and the listing stops:

* past ``settings.idc_max_listing_page_bytes`` bytes in one page;
* past the index's ``instanceCount`` keys (``settings.idc_max_objects`` where there is none), in
  all pages together, counted as they are parsed;
* past ``settings.query_timeout`` seconds for all its pages;
* at a key holding a control character (a line break would become part of a file name), or a
  continuation token seen before, or an empty page that claims more.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from xml.parsers import expat

from ..errors import TCIAError, TCIAIntegrityError, TCIAResponseError, in_series

if TYPE_CHECKING:
    from ..retrieval.transport import RetryBudget
    from .location import IDCLocation

__all__ = ["IDCObject", "list_objects"]

log = logging.getLogger("intake_tcia")
_PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")
_FIELDS = frozenset({"Key", "Size", "ETag", "IsTruncated", "NextContinuationToken"})
_FIELD_LIMIT = 4096  # characters of one field (a key is at most 1024 bytes in S3)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class IDCObject:
    """One object of a series: its key, size, MD5 (from a plain-MD5 ETag, else None) and, once
    its header has been read, its SOPInstanceUID."""

    key: str
    size: int
    md5: str | None
    sop_instance_uid: str | None = None

    @property
    def name(self) -> str:
        """str: the file name the object gets in the cache (the key's last part)."""
        return self.key.rpartition("/")[2]


class _Page:
    """One ListObjectsV2 page, parsed as its bytes arrive; ``on_key`` is called for every key
    (it raises to stop the listing)."""

    def __init__(self, where: IDCLocation, on_key: Callable[[], None]) -> None:
        self.where = where
        self.on_key = on_key
        self.objects: list[IDCObject] = []
        self.fields: dict[str, str] = {}
        self.truncated = False
        self.token: str | None = None
        self._text: list[str] | None = None
        self._size = 0
        parser = expat.ParserCreate()
        parser.StartDoctypeDeclHandler = self._refuse
        parser.EntityDeclHandler = self._refuse
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._characters
        self.parser = parser

    def feed(self, data: bytes, last: bool = False) -> None:
        try:
            self.parser.Parse(data, last)
        except expat.ExpatError as exc:
            raise TCIAResponseError(f"not a ListObjectsV2 answer ({exc})") from None

    def _refuse(self, name: str, *args: Any) -> None:
        raise TCIAResponseError(f"the listing declares a DOCTYPE or entity ({name!r}); S3 "
                                "listings never do")

    def _start(self, name: str, attributes: Any) -> None:
        if name in _FIELDS:
            self._text, self._size = [], 0

    def _characters(self, data: str) -> None:
        if self._text is not None:
            self._size += len(data)
            if self._size > _FIELD_LIMIT:
                raise TCIAResponseError(f"a listing field holds over {_FIELD_LIMIT} characters")
            self._text.append(data)

    def _end(self, name: str) -> None:
        if self._text is not None and name in _FIELDS:
            self.fields[name] = "".join(self._text)
            self._text = None
        if name == "Contents":
            self._object(self.fields)
            self.fields = {}
        elif name == "IsTruncated":
            self.truncated = self.fields.pop(name, "").strip().lower() == "true"
        elif name == "NextContinuationToken":
            self.token = self.fields.pop(name, None)

    def _object(self, fields: dict[str, str]) -> None:
        self.on_key()
        key, prefix = fields.get("Key", ""), self.where.prefix
        if _CONTROL.search(key):
            raise TCIAIntegrityError(f"the bucket lists key {key!r}, holding a control "
                                     "character (a line break?); no file may be named so",
                                     retryable=False)
        if not key.startswith(prefix) or "/" in key[len(prefix):] or not key[len(prefix):]:
            log.warning("series %s: the listing names %.80r, not an object of the series; "
                        "left out", self.where.series_uid, key)
            return
        try:
            size = int(fields.get("Size", ""))
        except ValueError:
            raise TCIAResponseError(f"object {key}: size {fields.get('Size')!r} is no number"
                                    ) from None
        if size < 0:
            raise TCIAResponseError(f"object {key}: size {size} is negative")
        etag = fields.get("ETag", "").strip().strip('"').lower()
        self.objects.append(IDCObject(key, size, etag if _PLAIN_MD5.fullmatch(etag) else None))


def list_objects(
    idc: Any, where: IDCLocation, *, budget: RetryBudget | None = None,
    max_keys: int | None = None,
) -> list[IDCObject]:
    """The objects under a series' prefix (ListObjectsV2, every page), sorted by key.

    ``max_keys`` stops after that many (one page asking for only them). Errors name the series.

    Raises
    ------
    TCIAIntegrityError
        More keys than the index's ``instanceCount`` (or ``idc_max_objects``), or a key with a
        control character.
    TCIAResponseError
        A page over ``idc_max_listing_page_bytes``, a listing still going at its deadline, XML
        that is no listing (or declares entities), a listing that does not move on.
    TCIAHTTPError, TCIAConnectionError
        The retries were spent.
    """
    try:
        return _list(idc, where, budget or idc.transport.budget(), max_keys)
    except TCIAError as exc:
        raise in_series(exc, where.series_uid) from exc


def _list(idc: Any, where: IDCLocation, budget: RetryBudget,
          max_keys: int | None) -> list[IDCObject]:
    settings = idc.settings
    url = f"{settings.idc_url}{quote(where.bucket)}"
    deadline = time.monotonic() + settings.query_timeout  # every page together
    count = where.instance_count
    limit = min(settings.idc_max_objects, count) if count else settings.idc_max_objects
    found: list[IDCObject] = []
    keys = [0]  # keys parsed, all pages

    def on_key() -> None:
        keys[0] += 1
        if keys[0] > limit:
            said = (f"the IDC index says {count}" if count else
                    f"more than idc_max_objects ({settings.idc_max_objects}) allows")
            raise TCIAIntegrityError(
                f"the bucket lists more than {limit} objects under "
                f"s3://{where.bucket}/{where.prefix}, {said}", retryable=False)

    token: str | None = None
    tokens: set[str] = set()
    while True:
        params = {"list-type": "2", "prefix": where.prefix}
        if max_keys is not None:
            params["max-keys"] = str(max_keys - len(found))
        if token:
            params["continuation-token"] = token
        page = _read_page(idc, url, params, budget, where, on_key, keys, deadline)
        found += page.objects
        token = page.token
        if not (page.truncated and token) or (max_keys is not None and len(found) >= max_keys):
            break
        if token in tokens or not page.objects:
            raise TCIAResponseError(f"{url}: the listing of {where.prefix} does not move on "
                                    f"(continuation token {token[:40]!r} again, or an empty page)")
        tokens.add(token)
    return sorted({o.key: o for o in found}.values(), key=lambda o: o.key)


def _read_page(idc: Any, url: str, params: dict[str, str], budget: RetryBudget,
               where: IDCLocation, on_key: Callable[[], None], keys: list[int],
               deadline: float) -> _Page:
    """One page, parsed as it arrives; a body cut off is asked again on ``budget``."""
    transport, settings = idc.transport, idc.settings
    limit = settings.idc_max_listing_page_bytes
    before = keys[0]

    def attempt() -> _Page:
        keys[0] = before  # a page asked again counts once
        page = _Page(where, on_key)
        received = 0
        with transport.stream(url, params, budget=budget) as response:
            for chunk in transport.iter_body(response, deadline=deadline,
                                             max_ratio=settings.max_decompression_ratio):
                received += len(chunk)
                if received > limit:
                    raise TCIAResponseError(f"{url}: one listing page holds over {limit} bytes "
                                            "(idc_max_listing_page_bytes); giving up")
                page.feed(chunk)
        page.feed(b"", last=True)
        return page

    return budget.run(attempt)

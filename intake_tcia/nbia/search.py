"""NBIA's advanced search (getSimpleSearch) as series DataFrames, and descriptions as text.

getSimpleSearch answers patients, one page at a time, with internal ids rather than UIDs; the
NBIA portal turns a search into series through getManifestForSimpleSearch. :func:`nbia_search`
does the same: one getSimpleSearch of one patient learns how many patients match, the manifest is
asked a page of patients at a time, and the series' rows come from getSeriesMetadata (10,000 UIDs
a request), so the answer is a getSeries-shaped frame whatever the number of pages.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any, Protocol

from .._lazy import pandas as pd
from .._validate import validate_uid
from ..config import Settings
from ..criteria import SERIES_ORDER
from ..errors import TCIAError
from ..retrieval.transport import Transport
from ..schema import SCHEMAS, frame_from_records
from .flavours import Flavour

__all__ = ["nbia_search", "description_text"]


class _Hosts(Protocol):
    """What the search uses of :class:`~intake_tcia.nbia.backend.NBIABackend`."""

    settings: Settings
    transport: Transport
    flavours: dict[str, Flavour]

    def metadata_batches(self, host: str, uids: list[str]) -> list[pd.DataFrame]: ...

def nbia_search(nbia: _Hosts, form: Mapping[str, str], collections: Any, page_size: int
                ) -> pd.DataFrame:
    """The search on NBIA: each host that may hold the collections asked, paged."""
    if collections is None:
        hosts = list(nbia.settings.hosts)
    else:
        names = [collections] if isinstance(collections, str) else list(collections)
        hosts = list(dict.fromkeys(nbia.settings.host_for(n) for n in names))
    for host in hosts:
        flavour = nbia.flavours[host]
        if flavour.metadata_per_series:
            raise TCIAError(f"search needs an NBIA v4 server: {host} speaks {flavour.name}, "
                            "which has no getSimpleSearch")
    frames = [_series_frame(nbia, host, form, page_size) for host in hosts]
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("SeriesInstanceUID")
    return frame.sort_values(SERIES_ORDER, ignore_index=True, na_position="last")


def _series_frame(nbia: _Hosts, host: str, form: Mapping[str, str], size: int) -> pd.DataFrame:
    """One host's matching series: patients counted, manifests paged, metadata fetched."""
    transport = nbia.transport
    paging = {"sortField": "subject", "sortDirection": "ascending"}
    first = transport.get_json(host + "getSimpleSearch",
                               data={**form, **paging, "start": "0", "size": "1"})
    summary = first[0] if first and isinstance(first[0], dict) else {}
    total = summary.get("totalPatients")
    if not isinstance(total, int):
        raise TCIAError(f"{host}getSimpleSearch answered no totalPatients: {str(first)[:200]}")
    uids: list[str] = []
    for start in range(0, total, size):
        body, _ = transport.fetch("POST", host + "getManifestForSimpleSearch",
                                  data={**form, **paging, "start": str(start), "size": str(size)})
        uids += _manifest_uids(body.decode("utf-8", "replace"), host)
    uids = list(dict.fromkeys(uids))
    series = SCHEMAS["getSeries"].names
    frames = nbia.metadata_batches(host, uids) if uids else []
    if not frames:
        return frame_from_records([], SCHEMAS["getSeries"])
    return pd.concat(frames, ignore_index=True)[series]


def _manifest_uids(text: str, host: str) -> list[str]:
    head, marker, rest = text.partition("ListOfSeriesToDownload=")
    if not marker:
        raise TCIAError(f"{host}getManifestForSimpleSearch answered no manifest: {text[:200]!r}")
    return [validate_uid(line, "manifest UID") for line in rest.split() if line.strip()]


class _Text(HTMLParser):
    """Collects the text of an HTML fragment, a line break per block element."""

    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "ul", "ol"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def description_text(markup: Any) -> str | None:
    """The plain text of an HTML description (tags dropped, entities decoded, blocks on their
    own lines); None for a missing value."""
    if not isinstance(markup, str):
        return None
    parser = _Text()
    parser.feed(markup)
    parser.close()
    lines = (" ".join(line.split()) for line in html.unescape("".join(parser.parts)).split("\n"))
    return "\n".join(line for line in lines if line)

"""NBIA's advanced search (getSimpleSearch) as series DataFrames, and the DOI lookups.

getSimpleSearch answers patients, one page at a time, with internal ids rather than UIDs; the
NBIA portal turns a search into series through getManifestForSimpleSearch. :func:`search` does
the same: one getSimpleSearch of one patient learns how many patients match, the manifest is
asked a page of patients at a time, and the series' rows come from getSeriesMetadata (10,000 UIDs
a request), so the answer is a getSeries-shaped frame whatever the number of pages.

Every criterion is checked before any request. NBIA answers a malformed criterion with a 500
(which would be retried) or ignores an unknown one, so nothing malformed is ever sent.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import date
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

import pandas as pd

from .._validate import format_query_date, validate_date, validate_text, validate_uid
from ..citation import bare_doi
from ..errors import TCIAError
from ..schema import SCHEMAS, frame_from_records

if TYPE_CHECKING:
    from ..client import TCIAClient

__all__ = ["search", "search_form", "SPECIES", "description_text", "doi_url"]

#: Species names getSimpleSearch knows, as the NCI codes it filters on (tcia_utils' table).
SPECIES = {"human": "337915000", "mouse": "447612001", "dog": "448771007"}
#: Patients per getManifestForSimpleSearch page.
PAGE_SIZE = 1000
#: Python keyword -> (criteriaType, validator) of the criteria that take one or more values.
_LISTS = {
    "collection": ("CollectionCriteria", validate_text),
    "patient_id": ("PatientCriteria", validate_text),
    "study_uid": ("StudyCriteria", validate_uid),
    "series_uid": ("SeriesCriteria", validate_uid),
    "modality": ("ImageModalityCriteria", validate_text),
    "body_part": ("AnatomicalSiteCriteria", validate_text),
    "manufacturer": ("ManufacturerCriteria", validate_text),
    "species": ("SpeciesCriteria", lambda v, name: _species(v, name)),
}
_ORDER = ["Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"]


def _species(value: Any, name: str) -> str:
    text = validate_text(value, name)
    code = SPECIES.get(text.lower(), text)
    if not code.isdigit():
        raise ValueError(f"{name} {value!r} is not a species: use one of "
                         f"{', '.join(SPECIES)} or an NCI species code such as '337915000'")
    return code


def _values(value: str | Iterable[str], keyword: str, check: Any) -> list[str]:
    if isinstance(value, str):
        values = [value]
    elif isinstance(value, Iterable):
        values = list(value)
    else:
        raise TypeError(f"{keyword} must be a string or a list of strings, not "
                        f"{type(value).__name__}: {value!r}")
    if not values:
        raise ValueError(f"{keyword} must name at least one value")
    return list(dict.fromkeys(check(v, keyword) for v in values))


def search_form(
    *,
    collection: str | Iterable[str] | None = None,
    patient_id: str | Iterable[str] | None = None,
    study_uid: str | Iterable[str] | None = None,
    series_uid: str | Iterable[str] | None = None,
    modality: str | Iterable[str] | None = None,
    body_part: str | Iterable[str] | None = None,
    manufacturer: str | Iterable[str] | None = None,
    species: str | Iterable[str] | None = None,
    released_from: date | str | None = None,
    released_to: date | str | None = None,
    min_studies: int | None = None,
    all_modalities: bool = False,
) -> dict[str, str]:
    """The getSimpleSearch form fields of the criteria given, validated (see :func:`search`).

    Raises
    ------
    ValueError, TypeError
        For a malformed value, named, before any request.
    """
    given = dict(collection=collection, patient_id=patient_id, study_uid=study_uid,
                 series_uid=series_uid, modality=modality, body_part=body_part,
                 manufacturer=manufacturer, species=species)
    pairs: list[tuple[str, dict[str, str]]] = []
    for keyword, value in given.items():
        if value is not None:
            kind, check = _LISTS[keyword]
            pairs += [(kind, {"value": v}) for v in _values(value, keyword, check)]
    if released_from is not None or released_to is not None:
        start = validate_date(released_from, "released_from") if released_from else date(1900, 1, 1)
        end = validate_date(released_to, "released_to") if released_to else date.today()
        if start > end:
            raise ValueError(f"released_from {start} is after released_to {end}")
        pairs.append(("DateRangeCriteria", {"fromDate": format_query_date(start),
                                            "toDate": format_query_date(end)}))
    if min_studies is not None:
        if isinstance(min_studies, bool) or not isinstance(min_studies, int) or min_studies < 1:
            raise ValueError(f"min_studies must be a whole number >= 1, not {min_studies!r}")
        # NBIA keeps patients with MORE than the value's matching studies
        pairs.append(("MinNumberOfStudiesCriteria", {"value": str(min_studies - 1)}))
    if not isinstance(all_modalities, bool):
        raise TypeError(f"all_modalities must be True or False, not {all_modalities!r}")
    if all_modalities:
        if modality is None:
            raise ValueError("all_modalities=True needs the modalities in modality=")
        pairs.append(("ModalityAndedSearchCriteria", {"value": "all"}))
    form = {}
    for i, (kind, fields) in enumerate(pairs):
        form[f"criteriaType{i}"] = kind
        form.update({f"{name}{i}": value for name, value in fields.items()})
    return form


def search(client: TCIAClient, *, page_size: int = PAGE_SIZE, **criteria: Any) -> pd.DataFrame:
    """The series matching every criterion, in getSeries columns (see
    :meth:`TCIAClient.search <intake_tcia.client.TCIAClient.search>`)."""
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size must be a whole number >= 1, not {page_size!r}")
    from ..idc.queries import routed  # it builds on this module's SPECIES

    form = search_form(**criteria)
    return routed(client, "getSimpleSearch", form,
                  lambda: _nbia_search(client, form, criteria.get("collection"), page_size))


def _nbia_search(client: TCIAClient, form: dict[str, str], collections: Any, page_size: int
                 ) -> pd.DataFrame:
    """The search on NBIA: each host that may hold the collections asked, paged."""
    if collections is None:
        hosts = list(client.settings.hosts)
    else:
        names = [collections] if isinstance(collections, str) else list(collections)
        hosts = list(dict.fromkeys(client.settings.host_for(n) for n in names))
    for host in hosts:
        flavour = client._flavours[host]
        if flavour.metadata_per_series:
            raise TCIAError(f"search needs an NBIA v4 server: {host} speaks {flavour.name}, "
                            "which has no getSimpleSearch")
    frames = [_series_frame(client, host, form, page_size) for host in hosts]
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("SeriesInstanceUID")
    return frame.sort_values(_ORDER, ignore_index=True, na_position="last")


def _series_frame(client: TCIAClient, host: str, form: dict[str, str], size: int) -> pd.DataFrame:
    """One host's matching series: patients counted, manifests paged, metadata fetched."""
    transport = client._transport
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
    frames = client._metadata_batches(host, uids) if uids else []
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


def doi_url(doi: str) -> str:
    """``https://doi.org/<doi>``, as NBIA stores DataDescriptionURI; ValueError if not a DOI."""
    bare = bare_doi(validate_text(doi, "doi"))
    if bare is None:
        raise ValueError(f"doi {doi!r} is not a DOI: expected e.g. '10.7937/K9/TCIA.2015.PF0M9REI'"
                         " or 'https://doi.org/10.7937/...'")
    return "https://doi.org/" + bare


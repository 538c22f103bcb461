"""Search criteria and DOIs, checked before any request, as NBIA's getSimpleSearch form.

The form is the one NBIA is sent; the IDC index reads the same form
(:mod:`intake_tcia.idc.queries`), so both backends answer one set of checked criteria. NBIA
answers a malformed criterion with a 500 (which would be retried) or ignores an unknown one, so
nothing malformed is ever sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from ._validate import format_query_date, validate_date, validate_text, validate_uid
from .citation import bare_doi

__all__ = ["search_form", "SPECIES", "PAGE_SIZE", "SERIES_ORDER", "doi_url"]

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
#: The order of searched series.
SERIES_ORDER = ["Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"]


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
    """The getSimpleSearch form fields of the criteria given, validated (see
    :meth:`TCIAClient.search <intake_tcia.client.TCIAClient.search>`).

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

def doi_url(doi: str) -> str:
    """``https://doi.org/<doi>``, as NBIA stores DataDescriptionURI; ValueError if not a DOI."""
    bare = bare_doi(validate_text(doi, "doi"))
    if bare is None:
        raise ValueError(f"doi {doi!r} is not a DOI: expected e.g. '10.7937/K9/TCIA.2015.PF0M9REI'"
                         " or 'https://doi.org/10.7937/...'")
    return "https://doi.org/" + bare


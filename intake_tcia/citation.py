"""Citations and licences of a selection of TCIA series.

TCIA asks everyone who uses a collection to cite its DOI (``DataDescriptionURI``) and to honour
its licence (``LicenseName``, ``LicenseURI``); every getSeries row carries all three. The titles,
creators and years of the DOIs come from DataCite, through a ``datacite`` callable that the
caller provides (:meth:`TCIAClient.datacite`), so this module does no I/O of its own.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._lazy import pandas as pd
from .errors import TCIAError
from .schema import STRING_DTYPE

__all__ = [
    "licences",
    "citations",
    "format_citations",
    "bare_doi",
    "SERIES_COLUMNS",
    "LICENCE_COLUMNS",
    "CITATION_COLUMNS",
    "TCIA_PUBLICATION",
]

#: What a selection must tell about each series (getSeries names).
SERIES_COLUMNS = [
    "Collection", "DataDescriptionURI", "LicenseName", "LicenseURI", "SeriesInstanceUID",
    "ImageCount", "FileSize",
]
LICENCE_COLUMNS = [
    "Collection", "DOI", "LicenseName", "LicenseURI", "Series", "Images", "Bytes",
]
CITATION_COLUMNS = [
    "Collection", "DOI", "Title", "Creators", "Year", "Publisher", "Version", "URL",
    "LicenseName", "LicenseURI", "Citation",
]
#: The paper TCIA asks users to cite besides the data (its data usage policy).
TCIA_PUBLICATION = (
    "Clark, K., Vendt, B., Smith, K., Freymann, J., Kirby, J., Koppel, P., Moore, S., "
    "Phillips, S., Maffitt, D., Pringle, M., Tarbox, L., & Prior, F. (2013). The Cancer Imaging "
    "Archive (TCIA): Maintaining and Operating a Public Information Repository. Journal of "
    "Digital Imaging, 26(6), 1045-1057. https://doi.org/10.1007/s10278-013-9622-7"
)
PUBLISHER = "The Cancer Imaging Archive"

_NUMERIC = ("Series", "Images", "Bytes", "Year")
_ALIASES = {"DOI": "DataDescriptionURI", "CollectionURI": "DataDescriptionURI"}  # older names
_DOI = re.compile(r"(?:(?:https?://)?(?:dx\.)?doi\.org/|doi:\s*)?(10\.[0-9]{4,9}/\S+)", re.I)

DataCite = Callable[[str], "Mapping[str, Any] | None"]


def bare_doi(value: Any) -> str | None:
    """The DOI in ``value`` without its resolver, e.g. ``"10.7937/K9/TCIA.2015.7GO2GSKS"``.

    Accepts ``https://doi.org/10...``, ``http://dx.doi.org/10...``, ``doi:10...`` and ``10...``;
    returns None for anything else (missing values, other URLs).
    """
    if not isinstance(value, str):
        return None
    match = _DOI.fullmatch(urllib.parse.unquote(value.strip()))
    return match.group(1) if match else None


def licences(selection: Any) -> pd.DataFrame:
    """The licences that apply to a selection of series, one row per (DOI, licence).

    Parameters
    ----------
    selection : pandas.DataFrame, intake source or catalog, or iterable of them
        Series as :meth:`TCIAClient.series` lists them, or intake entries whose ``metadata``
        holds the same keys (see ``SERIES_COLUMNS``), or mappings with those keys.

    Returns
    -------
    pandas.DataFrame
        Columns ``LICENCE_COLUMNS``: the collection(s) (joined with ``"; "``), the bare DOI,
        LicenseName, LicenseURI, and the number of distinct series, images and bytes
        (nullable integers) under that licence; sorted by collection.
    """
    table = _series_table(selection)
    keys = ["_key", "LicenseName", "LicenseURI"]
    rows = [
        {
            "Collection": _join(group["Collection"]),
            "DOI": _first(group["DOI"]),
            "LicenseName": name,
            "LicenseURI": uri,
            "Series": group["SeriesInstanceUID"].nunique(),
            "Images": group["ImageCount"].sum(min_count=1),
            "Bytes": group["FileSize"].sum(min_count=1),
        }
        for (_, name, uri), group in table.groupby(keys, dropna=False, sort=False)
    ]
    frame = pd.DataFrame(rows, columns=LICENCE_COLUMNS)
    frame = frame.astype({"Series": "Int64", "Images": "Int64", "Bytes": "Int64"})
    return _tidy(frame)


def citations(selection: Any, *, datacite: DataCite | None = None) -> pd.DataFrame:
    """How to cite a selection of series: one row per DOI, in the form TCIA asks for.

    Parameters
    ----------
    selection : pandas.DataFrame, intake source or catalog, or iterable of them
        As for :func:`licences`.
    datacite : callable, optional
        ``datacite(doi)`` gives the DataCite ``data.attributes`` of a bare DOI, or None when
        unknown; :meth:`TCIAClient.datacite` does. It is called once per DOI. Without it, or
        when it returns None or raises a :class:`~intake_tcia.errors.TCIAError`, the
        citation names the collection and the DOI only.

    Returns
    -------
    pandas.DataFrame
        Columns ``CITATION_COLUMNS``. ``Citation`` reads
        ``Creators (Year). Title (Version) [Data set]. The Cancer Imaging Archive.
        https://doi.org/DOI``; ``Year`` is a nullable integer, the rest are strings.
    """
    table = _series_table(selection)
    rows = []
    for _, group in table.groupby("_key", sort=False):
        doi = _first(group["DOI"])
        found = _describe(_lookup(datacite, doi)) if doi else {}
        row = dict.fromkeys(CITATION_COLUMNS) | found
        row["Collection"], row["DOI"] = _join(group["Collection"]), doi
        row["URL"] = row["URL"] or (f"https://doi.org/{doi}" if doi
                                    else _first(group["DataDescriptionURI"]))
        # the licence the archive states for the series wins over DataCite's rightsList
        row["LicenseName"] = _join(group["LicenseName"]) or row["LicenseName"]
        row["LicenseURI"] = _join(group["LicenseURI"]) or row["LicenseURI"]
        row["Citation"] = _citation_text(row, known=bool(found))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=CITATION_COLUMNS).astype({"Year": "Int64"})
    return _tidy(frame)


def format_citations(df: pd.DataFrame) -> str:
    """Text for a paper's data section: the citations, the TCIA paper, then the licences.

    Parameters
    ----------
    df : pandas.DataFrame
        What :func:`citations` returned.

    Returns
    -------
    str
        One citation per line, then TCIA's own publication, then one line per licence
        naming the collections it covers.
    """
    if df.empty:
        return "No data sets selected."
    lines = ["Data sets:", *(f"  {c}" for c in df["Citation"]), "",
             "The archive (TCIA asks users to cite it too):", f"  {TCIA_PUBLICATION}", "",
             "Licences:"]
    grouped = df.groupby(["LicenseName", "LicenseURI"], dropna=False, sort=False)
    for (name, uri), group in grouped:
        label = " ".join(p for p in (_text(name), _text(uri) and f"<{uri}>") if p)
        lines.append(f"  {label or 'licence unknown'}: {_join(group['Collection'])}")
    return "\n".join(lines) + "\n"


def _series_table(selection: Any) -> pd.DataFrame:
    """The selection as a DataFrame of SERIES_COLUMNS plus DOI and a grouping key."""
    if not isinstance(selection, pd.DataFrame):
        selection = pd.DataFrame([_metadata(item) for item in _items(selection)])
    frame = selection.rename(columns=_ALIASES)
    frame = frame.loc[:, ~frame.columns.duplicated()].reindex(columns=SERIES_COLUMNS)
    for column in ("ImageCount", "FileSize"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    has_uid = frame["SeriesInstanceUID"].notna()
    frame = pd.concat([frame[has_uid].drop_duplicates("SeriesInstanceUID"), frame[~has_uid]],
                      ignore_index=True)
    dois = [bare_doi(uri) for uri in frame["DataDescriptionURI"]]
    frame["DOI"] = pd.Series(dois, index=frame.index, dtype=object)
    # DOIs are case-insensitive; series without one are grouped by collection
    frame["_key"] = [
        doi.lower() if doi else f"collection:{str(c).lower() if pd.notna(c) else ''}"
        for doi, c in zip(dois, frame["Collection"], strict=True)
    ]
    return frame


def _items(selection: Any) -> Iterable[Any]:
    """The entries of a selection: one source, a catalog or mapping of them, or an iterable."""
    if hasattr(selection, "metadata") and not hasattr(selection, "values"):
        return [selection]
    if callable(getattr(selection, "values", None)):
        return list(selection.values())
    if isinstance(selection, Iterable) and not isinstance(selection, str | bytes):
        return selection
    raise TypeError(
        "selection must be a DataFrame of series, intake sources or a catalog, not "
        f"{type(selection).__name__}"
    )


def _metadata(item: Any) -> Mapping[str, Any]:
    """The series keys an entry, a source or a mapping holds."""
    if isinstance(item, Mapping):
        return item
    metadata = getattr(item, "metadata", None)
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"cannot cite a {type(item).__name__}: it has no .metadata mapping with "
            f"{', '.join(SERIES_COLUMNS)}"
        )
    return metadata


def _lookup(datacite: DataCite | None, doi: str) -> Mapping[str, Any] | None:
    """The DataCite attributes of ``doi``, or None when they cannot be had."""
    if datacite is None:
        return None
    try:
        found = datacite(doi)
    except TCIAError:
        return None
    if found is not None and not isinstance(found, Mapping):
        raise TypeError(f"datacite({doi!r}) must return a mapping or None, not {found!r}")
    if found and isinstance(found.get("data"), Mapping):  # a whole JSON:API document
        found = found["data"].get("attributes")
    return found or None


def _describe(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Title, Creators, Year, Publisher, Version, URL and licence from DataCite attributes."""
    if not attributes:
        return {}
    titles = [t for t in attributes.get("titles") or [] if isinstance(t, Mapping)]
    main = [t for t in titles if not t.get("titleType")] or titles
    publisher = attributes.get("publisher")
    if isinstance(publisher, Mapping):  # DataCite's newer form, {"name": ...}
        publisher = publisher.get("name")
    year = str(attributes.get("publicationYear") or "").strip()
    rights = [r for r in attributes.get("rightsList") or [] if isinstance(r, Mapping)]
    creators = [_apa_name(c) for c in attributes.get("creators") or [] if isinstance(c, Mapping)]
    return {
        "Title": _text(main[0].get("title")) if main else None,
        "Creators": _apa_list([c for c in creators if c]),
        "Year": int(year) if year.isdigit() else None,
        "Publisher": _text(publisher),
        "Version": _text(attributes.get("version")),
        "URL": _text(attributes.get("url")),
        "LicenseName": _text(rights[0].get("rights")) if rights else None,
        "LicenseURI": _text(rights[0].get("rightsUri")) if rights else None,
    }


def _apa_name(creator: Mapping[str, Any]) -> str | None:
    """A creator as APA writes it: ``Family, G. N.`` for people, the name for organisations."""
    name = _text(creator.get("name"))
    family, given = _text(creator.get("familyName")), _text(creator.get("givenName"))
    if creator.get("nameType") == "Organizational":
        return name
    if not family and name and "," in name:
        family, given = (part.strip() for part in name.split(",", 1))
    if not family:
        return name
    initials = " ".join(
        "-".join(f"{piece[0]}." for piece in word.split("-") if piece)
        for word in (given or "").split()
    )
    return f"{family}, {initials}" if initials else family


def _apa_list(names: list[str]) -> str | None:
    """Names joined as APA does: ``A, B, & C``; after 20, the first 19, an ellipsis, the last."""
    if len(names) <= 1:
        return names[0] if names else None
    if len(names) > 20:
        return ", ".join(names[:19]) + ", . . . " + names[-1]
    return ", ".join(names[:-1]) + ", & " + names[-1]


def _citation_text(row: Mapping[str, Any], *, known: bool) -> str:
    """The citation of one DOI; the collection and DOI alone when DataCite said nothing."""
    link = f"https://doi.org/{row['DOI']}" if row["DOI"] else row["URL"]
    tail = f"{row.get('Publisher') or PUBLISHER}." + (f" {link}" if link else "")
    if not known:
        return f"{row['Collection'] or row['DOI'] or 'Unknown collection'}. {tail}"
    version = row.get("Version")
    if version and version[0].isdigit():
        version = f"Version {version}"
    title = (row.get("Title") or row["Collection"] or row["DOI"]).rstrip(".")
    work = f"{title}" + (f" ({version})" if version else "") + " [Data set]"
    year = f"({row['Year']})" if row.get("Year") is not None else "(n.d.)"
    creators = row.get("Creators")
    return f"{creators} {year}. {work}. {tail}" if creators else f"{work}. {year}. {tail}"


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns in the package's string dtype, rows sorted by collection and DOI."""
    text = [c for c in frame.columns if c not in _NUMERIC]
    frame = frame.astype(dict.fromkeys(text, STRING_DTYPE))
    return frame.sort_values(["Collection", "DOI"], na_position="last", ignore_index=True)


def _join(values: pd.Series) -> str | None:
    """The distinct non-empty values, in order, joined with ``"; "`` (None when there are none)."""
    distinct = dict.fromkeys(str(v).strip() for v in values.dropna() if str(v).strip())
    return "; ".join(distinct) or None


def _first(values: pd.Series) -> Any:
    """The first non-missing value, or None."""
    present = values.dropna()
    return present.iloc[0] if len(present) else None


def _text(value: Any) -> str | None:
    """A stripped string (numbers too, as DataCite versions may be), or None when missing."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return (value.strip() or None) if isinstance(value, str) else None

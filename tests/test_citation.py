"""Tests of intake_tcia.citation: licences and citations of a selection of series.

DataCite is reached through the ``datacite`` callable the client provides; here a plain
function returns hand-made JSON:API ``attributes`` (no HTTP is involved in this module).
"""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest
import yaml

from intake_tcia.citation import (
    CITATION_COLUMNS,
    LICENCE_COLUMNS,
    TCIA_PUBLICATION,
    bare_doi,
    citations,
    format_citations,
    licences,
)
from intake_tcia.errors import TCIAConnectionError

LIDC = "10.7937/K9/TCIA.2015.LO9QL9SX"
QIN = "10.7937/K9/TCIA.2016.FADS26KG"
CC_BY_3 = ("Creative Commons Attribution 3.0 Unported License",
           "http://creativecommons.org/licenses/by/3.0/")
CC_BY_NC_4 = ("Creative Commons Attribution-NonCommercial 4.0 International License",
              "https://creativecommons.org/licenses/by-nc/4.0/")

# hand-made DataCite "data.attributes", in the shape of api.datacite.org/dois/{doi}
QIN_ATTRIBUTES = {
    "doi": QIN.lower(),
    "titles": [{"title": "Data From QIN PROSTATE"},
               {"title": "QIN-PROSTATE", "titleType": "AlternativeTitle"}],
    "creators": [
        {"name": "Fedorov, Andriy", "nameType": "Personal", "givenName": "Andriy",
         "familyName": "Fedorov"},
        {"name": "Tempany, Clare M.", "nameType": "Personal"},
        {"name": "Jean-Paul Smith"},  # no comma, no parts: kept as written
        {"nameType": "Personal", "givenName": "Jean-Paul", "familyName": "Dupont"},
        {"name": "QIN Network", "nameType": "Organizational"},
    ],
    "publicationYear": 2016,
    "publisher": "The Cancer Imaging Archive",
    "version": "2",
    "url": "https://www.cancerimagingarchive.net/collection/qin-prostate/",
    "rightsList": [{"rights": CC_BY_3[0], "rightsUri": CC_BY_3[1]}],
}


# four getSeries-like rows: three LIDC series (two DOI spellings, one repeated), one QIN
ROWS = [
    {"Collection": "LIDC-IDRI", "DataDescriptionURI": f"https://doi.org/{LIDC}",
     "SeriesInstanceUID": "1.2.1", "ImageCount": 100, "FileSize": 1000},
    {"Collection": "LIDC-IDRI", "DataDescriptionURI": f"doi:{LIDC.lower()}",
     "SeriesInstanceUID": "1.2.2", "ImageCount": 50, "FileSize": 500},
    {"Collection": "LIDC-IDRI", "DataDescriptionURI": f"https://doi.org/{LIDC}",
     "SeriesInstanceUID": "1.2.1", "ImageCount": 100, "FileSize": 1000},
    {"Collection": "QIN-PROSTATE", "DataDescriptionURI": QIN,
     "SeriesInstanceUID": "1.2.3", "ImageCount": 20, "FileSize": 200},
]
ROWS = [{**row, "LicenseName": CC_BY_3[0], "LicenseURI": CC_BY_3[1]} for row in ROWS]


def series_frame(**overrides) -> pd.DataFrame:
    """ROWS as getSeries gives them (with a column citations do not need)."""
    frame = pd.DataFrame(ROWS).astype({"ImageCount": "Int64", "FileSize": "Int64"})
    return frame.assign(Modality=["CT", "CT", "CT", "MR"], **overrides)


def plain(frame: pd.DataFrame) -> list[list]:
    """The values of a frame as Python lists, None for any missing value."""
    return frame.astype(object).where(frame.notna(), None).values.tolist()


class FakeSource:
    """Anything with a ``.metadata`` mapping, like an intake entry or source."""

    def __init__(self, **metadata):
        self.metadata = metadata


# --- DOIs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [f"https://doi.org/{LIDC}", f"http://dx.doi.org/{LIDC}", f"doi:{LIDC}", f"DOI: {LIDC}",
     LIDC, f"  {LIDC} ", f"https://doi.org/{LIDC.replace('/', '%2F')}"],
)
def test_bare_doi(value):
    assert bare_doi(value) == LIDC


@pytest.mark.parametrize(
    "value", [None, float("nan"), "", "https://wiki.cancerimagingarchive.net/x/abc", "10.1/x",
              "doi:", 10.7937],
)
def test_bare_doi_rejects_non_dois(value):
    assert bare_doi(value) is None


# --- licences --------------------------------------------------------------------------------


def test_licences_one_row_per_doi_and_licence():
    frame = series_frame()
    frame.loc[3, ["LicenseName", "LicenseURI"]] = CC_BY_NC_4
    extra = pd.DataFrame({  # a second licence under the LIDC DOI, and a series without DOI
        "Collection": ["LIDC-IDRI", "Private"], "DataDescriptionURI": [LIDC, None],
        "LicenseName": [CC_BY_NC_4[0], None], "LicenseURI": [CC_BY_NC_4[1], None],
        "SeriesInstanceUID": ["1.2.9", "1.2.10"], "ImageCount": [7, None], "FileSize": [70, None],
    })
    table = licences(pd.concat([frame, extra], ignore_index=True))
    assert list(table.columns) == LICENCE_COLUMNS
    assert plain(table.drop(columns="LicenseURI")) == [
        ["LIDC-IDRI", LIDC, CC_BY_3[0], 2, 150, 1500],  # the repeated series counted once
        ["LIDC-IDRI", LIDC, CC_BY_NC_4[0], 1, 7, 70],
        ["Private", None, None, 1, None, None],
        ["QIN-PROSTATE", QIN, CC_BY_NC_4[0], 1, 20, 200],
    ]
    assert {str(t) for t in table.dtypes[["Series", "Images", "Bytes"]]} == {"Int64"}


def test_licences_join_collections_sharing_a_doi():
    frame = series_frame(Collection=["LIDC-IDRI", "LIDC-IDRI", "LIDC-IDRI", "QIN-PROSTATE"],
                         DataDescriptionURI=[LIDC, LIDC, LIDC, LIDC.lower()])
    frame.loc[1, "Collection"] = "LIDC-IDRI-Analysis"
    table = licences(frame)
    assert len(table) == 1
    assert table.loc[0, "Collection"] == "LIDC-IDRI; LIDC-IDRI-Analysis; QIN-PROSTATE"
    assert table.loc[0, "DOI"] == LIDC  # the first spelling met
    assert table.loc[0, "Series"] == 3


def test_licences_of_an_empty_selection():
    table = licences(series_frame().iloc[:0])
    assert table.empty and list(table.columns) == LICENCE_COLUMNS


def test_old_column_name_is_understood():
    frame = series_frame().rename(columns={"DataDescriptionURI": "CollectionURI"})
    assert sorted(licences(frame)["DOI"]) == [LIDC, QIN]


# --- the selection can be intake entries, sources, catalogs or mappings ----------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda rows: [FakeSource(**r) for r in rows],
        lambda rows: {f"s{i}": FakeSource(**r) for i, r in enumerate(rows)},
        lambda rows: rows,
        lambda rows: (FakeSource(**r) for r in rows),
    ],
    ids=["sources", "mapping-of-sources", "dicts", "generator"],
)
def test_selection_forms(make):
    expected = licences(series_frame())
    pd.testing.assert_frame_equal(licences(make(ROWS)), expected)


def test_single_source():
    table = licences(FakeSource(**ROWS[3]))
    assert table["DOI"].tolist() == [QIN]
    assert table["Images"].tolist() == [20]


def test_intake_catalog(tmp_path):
    intake = pytest.importorskip("intake")
    entries = {
        f"series{i}": {"driver": "csv", "args": {"urlpath": "x.csv"}, "metadata": row}
        for i, row in enumerate(ROWS)
    }
    path = tmp_path / "cat.yaml"
    path.write_text(yaml.safe_dump({"sources": entries}))
    cat = intake.open_catalog(str(path))
    pd.testing.assert_frame_equal(licences(cat), licences(series_frame()))


@pytest.mark.parametrize(
    ("bad", "match"),
    [(42, "selection must be"), ([object()], "cannot cite a object"),
     ([FakeSource(), 3], "cannot cite a int"), ("LIDC-IDRI", "selection must be")],
)
def test_bad_selection(bad, match):
    with pytest.raises(TypeError, match=match):
        licences(bad)


# --- citations -------------------------------------------------------------------------------


def test_citation_from_datacite():
    calls = []

    def datacite(doi):
        calls.append(doi)
        return QIN_ATTRIBUTES if doi.lower() == QIN.lower() else None

    table = citations(series_frame(), datacite=datacite)
    assert list(table.columns) == CITATION_COLUMNS
    assert sorted(calls) == [LIDC, QIN]  # once per DOI, bare, whatever the spelling
    qin = table.set_index("DOI").loc[QIN]
    creators = "Fedorov, A., Tempany, C. M., Jean-Paul Smith, Dupont, J.-P., & QIN Network"
    assert qin["Creators"] == creators
    assert qin["Title"] == "Data From QIN PROSTATE"
    assert (qin["Year"], qin["Publisher"], qin["Version"]) == (2016, "The Cancer Imaging Archive",
                                                              "2")
    assert qin["URL"] == QIN_ATTRIBUTES["url"]
    assert qin["Citation"] == (
        f"{creators} (2016). Data From QIN PROSTATE (Version 2) [Data set]. "
        f"The Cancer Imaging Archive. https://doi.org/{QIN}"
    )
    lidc = table.set_index("DOI").loc[LIDC]  # DataCite did not know it: the DOI alone
    assert lidc["Citation"] == f"LIDC-IDRI. The Cancer Imaging Archive. https://doi.org/{LIDC}"
    assert pd.isna(lidc["Title"]) and pd.isna(lidc["Year"])
    assert lidc["URL"] == f"https://doi.org/{LIDC}"
    assert str(table["Year"].dtype) == "Int64"


@pytest.mark.parametrize(
    ("changes", "citation"),
    [
        ({"version": None}, "Fedorov, A. (2016). Data From QIN PROSTATE [Data set]. "),
        ({"version": "Version 3"}, "Fedorov, A. (2016). Data From QIN PROSTATE (Version 3) "
                                   "[Data set]. "),
        ({"publicationYear": None}, "Fedorov, A. (n.d.). Data From QIN PROSTATE (Version 2) "
                                    "[Data set]. "),
        ({"creators": []}, "Data From QIN PROSTATE (Version 2) [Data set]. (2016). "),
        ({"titles": [{"title": "Alt", "titleType": "AlternativeTitle"}]},
         "Fedorov, A. (2016). Alt (Version 2) [Data set]. "),
        ({"titles": []}, "Fedorov, A. (2016). QIN-PROSTATE (Version 2) [Data set]. "),
        ({"publisher": {"name": "The Cancer Imaging Archive"}},
         "Fedorov, A. (2016). Data From QIN PROSTATE (Version 2) [Data set]. "),
    ],
)
def test_citation_forms(changes, citation):
    attributes = {**QIN_ATTRIBUTES, "creators": QIN_ATTRIBUTES["creators"][:1], **changes}
    table = citations(series_frame().iloc[[3]], datacite=lambda doi: attributes)
    assert table.loc[0, "Citation"] == (
        citation + f"The Cancer Imaging Archive. https://doi.org/{QIN}"
    )


def test_more_than_twenty_creators_are_shortened():
    creators = [{"familyName": f"Name{i}", "givenName": "A"} for i in range(25)]
    table = citations(series_frame().iloc[[3]],
                      datacite=lambda doi: {**QIN_ATTRIBUTES, "creators": creators})
    names = table.loc[0, "Creators"]
    assert names.startswith("Name0, A., Name1, A.,") and ", . . . Name24, A." in names
    assert "Name19," not in names and names.count("Name") == 20


def test_whole_json_api_document_is_accepted():
    table = citations(series_frame().iloc[[3]],
                      datacite=lambda doi: {"data": {"id": QIN, "attributes": QIN_ATTRIBUTES}})
    assert table.loc[0, "Title"] == "Data From QIN PROSTATE"


def test_licence_falls_back_to_datacite_rights():
    frame = series_frame(LicenseName=None, LicenseURI=None).iloc[[3]]
    table = citations(frame, datacite=lambda doi: QIN_ATTRIBUTES)
    assert (table.loc[0, "LicenseName"], table.loc[0, "LicenseURI"]) == CC_BY_3
    assert pd.isna(citations(frame).loc[0, "LicenseName"])


def test_unreachable_datacite_falls_back_to_the_doi():
    def datacite(doi):
        raise TCIAConnectionError("api.datacite.org: connection refused")

    table = citations(series_frame(), datacite=datacite)
    assert table["Citation"].tolist() == [
        f"LIDC-IDRI. The Cancer Imaging Archive. https://doi.org/{LIDC}",
        f"QIN-PROSTATE. The Cancer Imaging Archive. https://doi.org/{QIN}",
    ]
    pd.testing.assert_frame_equal(table, citations(series_frame()))


def test_other_datacite_errors_are_not_hidden():
    def broken(doi):
        raise RuntimeError("bug in the callable")

    with pytest.raises(RuntimeError, match="bug"):
        citations(series_frame(), datacite=broken)
    with pytest.raises(TypeError, match="must return a mapping"):
        citations(series_frame(), datacite=lambda doi: "Data From QIN PROSTATE")


def test_series_without_doi_are_cited_by_collection():
    frame = series_frame(DataDescriptionURI=[None, None, None,
                                             "https://wiki.cancerimagingarchive.net/x/abc"])
    table = citations(frame, datacite=lambda doi: pytest.fail("no DOI to look up"))
    assert table["Citation"].tolist() == [
        "LIDC-IDRI. The Cancer Imaging Archive.",
        "QIN-PROSTATE. The Cancer Imaging Archive. https://wiki.cancerimagingarchive.net/x/abc",
    ]


# --- text for a paper ------------------------------------------------------------------------


def test_format_citations():
    frame = series_frame()
    frame.loc[3, ["LicenseName", "LicenseURI"]] = CC_BY_NC_4
    table = citations(frame, datacite=lambda doi: QIN_ATTRIBUTES if "FADS" in doi else None)
    text = format_citations(table)
    qin_citation = table.set_index("DOI").loc[QIN, "Citation"]
    assert text == textwrap.dedent(f"""\
        Data sets:
          LIDC-IDRI. The Cancer Imaging Archive. https://doi.org/{LIDC}
          {qin_citation}

        The archive (TCIA asks users to cite it too):
          {TCIA_PUBLICATION}

        Licences:
          {CC_BY_3[0]} <{CC_BY_3[1]}>: LIDC-IDRI
          {CC_BY_NC_4[0]} <{CC_BY_NC_4[1]}>: QIN-PROSTATE
        """)


def test_format_citations_of_nothing():
    assert format_citations(citations(series_frame().iloc[:0])) == "No data sets selected."

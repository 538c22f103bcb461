"""TCIAClient.search, collection_descriptions and series_for_doi against the sample archive.

Expected answers are computed here from the archive's own table with pandas, independently of the
server's search code, and the frames compared with what getSeries gives for the same UIDs.
"""

from __future__ import annotations

import pandas as pd
import pytest

from intake_tcia import TCIAClient
from intake_tcia.nbia.search import description_text
from intake_tcia.schema import SCHEMAS, frame_from_records

ORDER = ["Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"]


@pytest.fixture
def client(server, tmp_cache):
    with TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                    cache_dir=tmp_cache, retries=0) as c:
        yield c


def expected(server, select) -> list[str]:
    table = server.archive.table
    return sorted(table.loc[select(table), "SeriesInstanceUID"])


def check(client, frame, uids):
    """``frame`` holds exactly ``uids``, typed and valued as getSeries gives them."""
    assert sorted(frame["SeriesInstanceUID"]) == uids
    assert list(frame.columns) == SCHEMAS["getSeries"].names
    reference = pd.concat([frame_from_records([], SCHEMAS["getSeries"])]
                          + [client.series(series_uid=u) for u in uids], ignore_index=True)
    reference = reference.sort_values(ORDER, ignore_index=True)
    pd.testing.assert_frame_equal(frame, reference)


def upper(table, column):
    return table[column].str.upper()


CASES = {
    "collection": (dict(collection="pydicom-dicomdir"),
                   lambda t: upper(t, "Collection") == "PYDICOM-DICOMDIR"),
    "collections": (dict(collection=["Pydicom-CT-Series", "NLST"]),
                    lambda t: t["Collection"].isin(["Pydicom-CT-Series", "NLST"])),
    "modality": (dict(modality="mr"), lambda t: t["Modality"] == "MR"),
    "body_part": (dict(body_part=["chest"]), lambda t: t["BodyPartExamined"] == "CHEST"),
    "body_part_null": (dict(body_part="NOT SPECIFIED"), lambda t: t["BodyPartExamined"].isna()),
    "manufacturer": (dict(manufacturer="GE MEDICAL SYSTEMS"),
                     lambda t: upper(t, "Manufacturer") == "GE MEDICAL SYSTEMS"),
    "patient": (dict(patient_id=["100002", "PYCT-001"]),
                lambda t: t["PatientID"].isin(["100002", "PYCT-001"])),
    "species": (dict(species="human"), lambda t: t["SpeciesCode"] == "337915000"),
    "mouse": (dict(species="mouse"), lambda t: t["SpeciesCode"] == "447612001"),
    "released": (dict(released_from="2019-01-01", released_to="12-31-2020"),
                 lambda t: pd.to_datetime(t["DateReleased"], format="%m-%d-%Y").between(
                     "2019-01-01", "2020-12-31")),
    "combined": (dict(collection="NLST", modality="CT", body_part="CHEST"),
                 lambda t: (t["Collection"] == "NLST") & (t["Modality"] == "CT")
                 & (t["BodyPartExamined"] == "CHEST")),
    "nothing": (dict(collection="NLST", modality="CR"), lambda t: t["Modality"] == "NONE"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_criterion_alone_and_combined(server, client, name):
    criteria, select = CASES[name]
    check(client, client.search(**criteria), expected(server, select))


def _patients_with(table, n_studies):
    studies = table.groupby(["Collection", "PatientID"])["StudyInstanceUID"].transform("nunique")
    return studies >= n_studies


def test_min_studies_means_at_least(server, client):
    frame = client.search(min_studies=2, collection=["NLST", "Pydicom-DICOMDIR"])
    uids = expected(server, lambda t: _patients_with(t, 2)
                    & t["Collection"].isin(["NLST", "Pydicom-DICOMDIR"]))
    assert uids  # the archive holds patients with two studies and more
    check(client, frame, uids)


def test_all_modalities_keeps_patients_holding_each(server, client):
    frame = client.search(modality=["CT", "MR"], all_modalities=True)

    def both(t):
        keys = t.groupby(["Collection", "PatientID"])["Modality"].transform(
            lambda m: {"CT", "MR"} <= set(m))
        return keys.astype(bool)

    uids = expected(server, both)
    assert uids and set(frame["Modality"]) >= {"CT", "MR"}
    check(client, frame, uids)


@pytest.mark.parametrize("page_size", [1, 2, 3, 1000])
def test_paging_across_page_boundaries(server, client, page_size):
    frame = client.search(collection="Pydicom-DICOMDIR", page_size=page_size)
    check(client, frame, expected(server, lambda t: t["Collection"] == "Pydicom-DICOMDIR"))
    patients = server.archive.table.query("Collection == 'Pydicom-DICOMDIR'")["PatientID"].nunique()
    pages = [r for r in server.requests if r.endpoint == "getManifestForSimpleSearch"]
    assert len(pages) == -(-patients // page_size)
    assert [int(r.params["start"]) for r in pages] == list(range(0, patients, page_size))


def test_request_shape_and_host_routing(server, client):
    client.search(collection="NLST", modality=["CT", "MR"])
    asked = {(r.host, r.endpoint) for r in server.requests}
    assert ("main", "getSimpleSearch") not in asked  # NLST is asked of its own host only
    form = next(r.params for r in server.requests if r.endpoint == "getSimpleSearch")
    assert form["criteriaType0"] == "CollectionCriteria" and form["value0"] == "NLST"
    assert (form["criteriaType1"], form["value1"]) == ("ImageModalityCriteria", "CT")
    assert (form["criteriaType2"], form["value2"]) == ("ImageModalityCriteria", "MR")


@pytest.mark.parametrize("criteria, message", [
    (dict(released_from="2020/01/01"), "released_from"),
    (dict(released_from="2021-01-01", released_to="2020-01-01"), "after released_to"),
    (dict(min_studies=0), "min_studies"),
    (dict(min_studies="2"), "min_studies"),
    (dict(study_uid="1.2.x"), "study_uid"),
    (dict(species="cat"), "species"),
    (dict(modality=[]), "modality"),
    (dict(collection=""), "collection"),
    (dict(all_modalities=True), "all_modalities"),
    (dict(page_size=0), "page_size"),
])
def test_bad_criteria_refused_before_any_request(server, client, criteria, message):
    with pytest.raises(ValueError, match=message):
        client.search(**criteria)
    assert server.requests == []


def test_unknown_keyword_and_wrong_type(server, client):
    with pytest.raises(TypeError, match="colection"):
        client.search(colection="NLST")
    with pytest.raises(TypeError, match="modality"):
        client.search(modality=3)
    assert server.requests == []


def test_server_errors_of_the_search_endpoints(server):
    import requests

    url = server.api_url + "getSimpleSearch"
    missing = requests.post(url, data={"criteriaType0": "CollectionCriteria", "value0": "NLST"})
    assert missing.status_code == 500 and missing.text.endswith("\nnull")
    paging = {"sortField": "subject", "sortDirection": "ascending", "size": "5"}
    past = requests.post(url, data={**paging, "start": "99"})
    assert past.status_code == 500 and "fromIndex(99)" in past.text
    bad = requests.post(url, data={**paging, "start": "0", "criteriaType0": "DateRangeCriteria",
                                   "fromDate0": "2020/01/01", "toDate0": "01-01-2021"})
    assert bad.status_code == 500 and 'Unparseable date: "2020/01/01"' in bad.text
    empty = requests.post(server.api_url + "getManifestForSimpleSearch",
                          data={**paging, "start": "0", "criteriaType0": "CollectionCriteria",
                                "value0": "none"})
    assert empty.status_code == 200 and empty.text.endswith("ListOfSeriesToDownload=\n")
    doi = requests.post(server.api_url + "getCollectionOrSeriesForDOI", data={"format": "json"})
    assert doi.status_code == 400 and "'format'" in doi.text


def test_collection_descriptions_html_and_text(server, client):
    frame = client.collection_descriptions()
    assert sorted(frame["collectionName"]) == sorted(server.archive.collections)
    info = server.archive.collections["Pydicom-CT-Series"]
    row = frame.set_index("collectionName").loc["Pydicom-CT-Series"]
    assert row["description"] == info.description
    assert row["descriptionText"] == info.description.removeprefix("<p>").removesuffix("</p>")
    assert row["descriptionURI"] == info.doi_url
    nlst = client.collection_descriptions("nlst")
    assert list(nlst["collectionName"]) == ["NLST"]
    assert server.requests[-1].host == "nlst"  # NLST's description comes from its own host
    none = client.collection_descriptions("No-Such-Collection")
    assert none.empty and list(none.columns) == list(frame.columns)


def test_description_text():
    assert description_text("<p>A &amp; B</p><p>C<br>D</p>") == "A & B\nC\nD"
    assert description_text(None) is None


def test_series_for_doi_both_levels(server, client):
    info = server.archive.collections["Pydicom-CT-Series"]
    series = client.series_for_doi(info.doi)
    uids = sorted(server.archive.series_uids("Pydicom-CT-Series"))
    assert sorted(series["SeriesInstanceUID"]) == uids
    assert set(series["Collection"]) == {"Pydicom-CT-Series"}
    collection = client.series_for_doi("https://doi.org/" + info.doi.lower(), level="collection")
    assert list(collection["Collection"]) == ["Pydicom-CT-Series"]
    assert collection["SeriesInstanceUID"].isna().all()
    assert list(collection.columns) == list(series.columns)
    unknown = client.series_for_doi("10.7937/NOT-THERE")
    assert unknown.empty and list(unknown.columns) == list(series.columns)
    nlst = client.series_for_doi("doi:" + server.archive.collections["NLST"].doi)
    assert sorted(nlst["SeriesInstanceUID"]) == sorted(server.archive.series_uids("NLST"))


def test_series_for_doi_refuses_bad_input(server, client):
    with pytest.raises(ValueError, match="not a DOI"):
        client.series_for_doi("TCIA.2015")
    with pytest.raises(ValueError, match="level"):
        client.series_for_doi("10.7937/X", level="patient")
    assert server.requests == []


def test_cli_search_table_csv_json_and_manifest(env, capsys, tmp_path):
    import json

    from intake_tcia.cli import main
    from intake_tcia.manifest import read_manifest

    uids = expected(env, lambda t: (t["Collection"] == "NLST") & t["Modality"].isin(["CT", "MR"]))
    assert main(["search", "--collection", "NLST", "--modality", "CT", "--modality", "MR",
                 "--csv"]) == 0
    frame = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out), dtype=str)
    assert sorted(frame["SeriesInstanceUID"]) == uids
    assert main(["search", "--collection", "NLST", "--min-studies", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["PatientID"] for r in rows} == {"100002"}
    assert main(["search", "--species", "human", "--collection", "Pydicom-CT-Series"]) == 0
    assert "PYCT-001" in capsys.readouterr().out
    target = tmp_path / "found.tcia"
    assert main(["search", "--collection", "NLST", "--modality", "CT", "--modality", "MR",
                 "--manifest", str(target)]) == 0
    assert sorted(read_manifest(target).series_uids) == uids
    assert main(["search", "--released-from", "2020/01/01"]) == 1
    assert "released_from" in capsys.readouterr().err
    assert main(["search", "--manifest", str(target), "--csv"]) == 2


def test_catalog_search_entry(env):
    import intake

    cat = intake.open_catalog("catalogs/tcia.yaml")
    frame = cat["search"](collection="NLST", modality="CT").read()
    uids = expected(env, lambda t: (t["Collection"] == "NLST") & (t["Modality"] == "CT"))
    assert sorted(frame["SeriesInstanceUID"]) == uids
    assert len(cat["search"]().read()) == len(env.archive.table)

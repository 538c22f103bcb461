"""A misspelt keyword or name gets the closest right one, from search as from every query."""

from __future__ import annotations

import pytest

from intake_tcia.cli import main
from intake_tcia.client import TCIAClient
from intake_tcia.errors import TCIAUnknownNameError
from intake_tcia.hints import check_keywords, closest_keyword


@pytest.fixture
def client(server, tmp_cache):
    with TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                    cache_dir=tmp_cache) as c:
        yield c


def test_a_misspelt_search_collection_is_an_unknown_name_not_an_empty_table(client):
    with pytest.raises(TCIAUnknownNameError, match="did you mean 'NLST'") as caught:
        client.search(collection="NLTS")
    assert caught.value.field == "collection" and caught.value.suggestions == ["NLST"]
    with pytest.raises(TCIAUnknownNameError, match="did you mean 'CT'"):
        client.search(collection="NLST", modality=["CTT"])
    with pytest.raises(TCIAUnknownNameError, match="patient_id 'nope' in collection 'NLST'"):
        client.search(collection="NLST", patient_id="nope")


def test_an_empty_search_of_real_names_stays_an_empty_table(client, server):
    assert client.search(collection="NLST", modality="CR").empty


@pytest.mark.parametrize(("call", "keyword", "meant"), [
    ("search", "modalities", "modality"),
    ("search", "colection", "collection"),
    ("search", "patientId", "patient_id"),
    ("series", "patientId", "patient_id"),
    ("series", "colection", "collection"),
    ("series", "SeriesInstanceUID", "series_uid"),
    ("studies", "PatientID", "patient_id"),
    ("download", "dst", "dest"),
])
def test_a_wrong_keyword_names_the_public_method_and_the_closest(client, server, call, keyword,
                                                                meant):
    with pytest.raises(TypeError) as caught:
        getattr(client, call)(**{keyword: "x"})
    message = str(caught.value)
    assert message == (f"TCIAClient.{call}() got an unexpected keyword argument {keyword!r}; "
                       f"did you mean {meant!r}?")
    assert "search_form" not in message
    assert server.requests == []


def test_a_typeerror_from_inside_a_method_is_left_as_it_is(client):
    with pytest.raises(TypeError, match="modality must be a string or a list"):
        client.search(modality=3)


def test_closest_keyword_rules():
    assert closest_keyword("bodyParts", ["body_part"]) == "body_part"
    assert closest_keyword("studyInstanceUID", ["study_uid"]) == "study_uid"
    assert closest_keyword("zzz", ["collection"]) is None
    with pytest.raises(TypeError, match="it takes a, b"):
        check_keywords({"zzz": 1}, ["a", "b"], "f()")


def test_cli_search_of_a_misspelt_collection_is_one_line_and_status_1(server, tmp_cache, capsys):
    options = ["--api-url", server.api_url, "--nlst-api-url", server.nlst_api_url,
               "--cache-dir", str(tmp_cache)]
    assert main(["search", "--collection", "NLTS", *options]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "did you mean 'NLST'" in err

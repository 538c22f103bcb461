"""TCIAClient against the loopback sample archive: typed frames, routing, validation, faults."""

import pickle
import socket
import time

import pandas as pd
import pytest

from intake_tcia import TCIAClient
from intake_tcia.errors import (
    TCIAConnectionError,
    TCIAError,
    TCIAHTTPError,
    TCIANotFoundError,
    TCIAResponseError,
    TCIAUnknownNameError,
)
from intake_tcia.schema import SCHEMAS

MALFORMED_UIDS = ["1.2.abc", "1..2", "1.2;DROP", "", "1." + "2" * 70]


@pytest.fixture
def client(server, tmp_cache):
    with TCIAClient(
        api_url=server.api_url,
        nlst_api_url=server.nlst_api_url,
        cache_dir=tmp_cache,
        retries=2,
        backoff_factor=0.01,
    ) as c:
        yield c


def some_series(server, host="main"):
    table = server.archive.series
    return table[table["host"] == host].iloc[0]


def test_collections_include_nlst_from_its_own_host(client, server):
    frame = client.collections()
    assert list(frame.columns) == ["Collection"]
    assert "NLST" in set(frame["Collection"])
    expected = set(server.archive.series["Collection"])
    assert set(frame["Collection"]) == expected
    assert server.count("getCollectionValues", host="main") == 1
    assert server.count("getCollectionValues", host="nlst") == 1


def test_series_are_typed_and_match_the_archive(client, server):
    row = some_series(server)
    frame = client.series(collection=row["Collection"])
    assert list(frame.columns[: len(SCHEMAS["getSeries"].names)]) == SCHEMAS["getSeries"].names
    assert frame["ImageCount"].dtype == "Int64"
    assert frame["SeriesDate"].dtype == "datetime64[ns]"
    expected = server.archive.series
    expected = expected[expected["Collection"] == row["Collection"]]
    assert sorted(frame["SeriesInstanceUID"]) == sorted(expected["SeriesInstanceUID"])
    one = frame.set_index("SeriesInstanceUID").loc[row["SeriesInstanceUID"]]
    assert one["ImageCount"] == len(server.archive.instances(row["SeriesInstanceUID"]))


def test_filters_are_case_insensitive_and_empty_answers_keep_the_columns(client, server):
    row = some_series(server)
    lower = client.series(collection=row["Collection"].lower(), modality=row["Modality"].lower())
    upper = client.series(collection=row["Collection"], modality=row["Modality"])
    pd.testing.assert_frame_equal(lower, upper)
    assert len(upper) > 0
    empty = client.series(collection="NLST", modality="CR")  # both exist, not together
    assert empty.empty
    assert list(empty.columns) == SCHEMAS["getSeries"].names
    assert (empty.dtypes == upper.dtypes[empty.columns]).all()


def test_patients_and_studies(client, server):
    row = some_series(server)
    patients = client.patients(row["Collection"])
    assert "PatientID" in patients.columns and "PatientId" not in patients.columns
    assert row["PatientID"] in set(patients["PatientID"])
    studies = client.studies(collection=row["Collection"], patient_id=row["PatientID"])
    assert row["StudyInstanceUID"] in set(studies["StudyInstanceUID"])
    assert studies["SeriesCount"].dtype == "Int64"
    assert studies["StudyDate"].dtype == "datetime64[ns]"


def test_values_and_counts(client, server):
    row = some_series(server)
    modalities = client.modalities(collection=row["Collection"])
    assert row["Modality"] in set(modalities["Modality"])
    assert row["BodyPartExamined"] in set(
        client.body_parts(collection=row["Collection"])["BodyPartExamined"].dropna()
    ) or pd.isna(row["BodyPartExamined"])
    counts = client.value_counts("modality", collection=row["Collection"])
    assert list(counts.columns) == ["Modality", "Count", "Authorized"]
    table = server.archive.series
    in_collection = table[table["Collection"] == row["Collection"]]
    expected = in_collection.groupby("Modality")["PatientID"].nunique()  # NBIA counts patients
    assert dict(zip(counts["Modality"], counts["Count"], strict=True)) == expected.to_dict()
    with pytest.raises(ValueError, match="of must be one of"):
        client.value_counts("colour")


def test_series_size_and_instances_agree_with_the_files(client, server):
    row = some_series(server)
    uid = row["SeriesInstanceUID"]
    instances = server.archive.instances(uid)
    size = client.series_size(uid)
    assert size == {
        "TotalSizeInBytes": sum(path.stat().st_size for _, path in instances),
        "ObjectCount": len(instances),
    }
    assert sorted(client.sop_instance_uids(uid)) == sorted(sop for sop, _ in instances)
    tags = client.dicom_tags(uid)
    assert list(tags.columns) == ["element", "name", "data"]
    assert "(0008,0060)" in set(tags["element"])


def test_nlst_collection_goes_straight_to_the_nlst_host(client, server):
    frame = client.series(collection="nlst")
    assert len(frame) > 0 and set(frame["Collection"]) == {"NLST"}
    assert server.count("getSeries", host="main") == 0
    assert server.count("getSeries", host="nlst") == 1


def test_a_uid_alone_finds_its_host_and_the_host_is_remembered(client, server):
    uid = some_series(server, host="nlst")["SeriesInstanceUID"]
    assert client.series(series_uid=uid)["SeriesInstanceUID"].tolist() == [uid]
    assert server.count("getSeries", host="main") == 1  # asked first, had nothing
    server.clear_log()
    assert client.series_size(uid)["ObjectCount"] > 0
    assert server.count(host="main") == 0


def test_series_metadata_across_both_hosts(client, server):
    uids = [
        some_series(server)["SeriesInstanceUID"],
        some_series(server, "nlst")["SeriesInstanceUID"],
    ]
    frame = client.series_metadata(uids)
    assert sorted(frame["SeriesInstanceUID"]) == sorted(uids)
    assert (
        list(frame.columns[: len(SCHEMAS["getSeriesMetadata"].names)])
        == SCHEMAS["getSeriesMetadata"].names
    )
    assert frame["ImageCount"].dtype == "Int64"


def test_single_image_is_the_file(client, server):
    row = some_series(server)
    sop, path = server.archive.instances(row["SeriesInstanceUID"])[0]
    assert client.single_image(row["SeriesInstanceUID"], sop) == path.read_bytes()
    with pytest.raises(TCIANotFoundError):
        client.single_image("1.2.3.4.5.6.7.8.9", sop)


@pytest.mark.parametrize("uid", MALFORMED_UIDS)
def test_malformed_uids_are_refused_before_any_request(client, server, uid):
    with pytest.raises(ValueError, match="series_uid"):
        client.series(series_uid=uid)
    with pytest.raises(ValueError):
        client.series_size(uid)
    assert server.count() == 0


def test_bad_arguments_are_refused_before_any_request(client, server):
    with pytest.raises(TypeError, match="colection"):
        client.series(colection="X")
    with pytest.raises(TypeError, match="collection"):
        client.series(collection=42)
    with pytest.raises(ValueError, match="since"):
        client.updated_series("not a date")
    with pytest.raises(ValueError, match="collection"):
        client.patients("  ")
    with pytest.raises(TypeError, match="timeout_s"):
        TCIAClient(timeout_s=3)
    assert server.count() == 0


def test_updated_series_sends_the_v4_date_style(client, server):
    client.updated_series("2000-01-31")
    sent = [r.params for r in server.requests if r.endpoint == "getUpdatedSeries"]
    assert sent and all(p["fromDate"] == "01-31-2000" for p in sent)


@pytest.mark.parametrize("code", [429, 500, 503])
def test_transient_statuses_are_retried(client, server, code):
    server.faults.add("status", endpoint="getCollectionValues", code=code, times=2)
    assert "NLST" in set(client.collections()["Collection"])
    assert server.count("getCollectionValues", host="main") == 3


def test_retry_after_is_honoured(client, server):
    server.faults.add("status", endpoint="getPatient", code=503, retry_after=1, times=1)
    start = time.monotonic()
    client.patients(some_series(server)["Collection"])
    assert time.monotonic() - start >= 0.9
    assert server.count("getPatient") == 2


def test_retries_are_bounded_and_the_error_carries_status_and_text(client, server):
    server.faults.add("status", endpoint="getPatient", code=503, times=10, text="down for repairs")
    with pytest.raises(TCIAHTTPError) as caught:
        client.patients(some_series(server)["Collection"])
    assert caught.value.status == 503
    assert "down for repairs" in caught.value.text
    assert server.count("getPatient") == 3  # 1 + 2 retries


def test_a_400_carries_the_servers_plain_text(client, server):
    with pytest.raises(TCIAHTTPError) as caught:
        client._transport.get_json(server.api_url + "getSeries", params={"Colour": "red"})
    assert caught.value.status == 400
    assert "Invalid query parameter" in caught.value.text
    assert isinstance(caught.value, TCIAError) and isinstance(caught.value, OSError)


def test_a_body_reset_mid_way_is_retried(client, server):
    server.faults.add("reset", endpoint="getSeries", after_bytes=100)
    frame = client.series(collection=some_series(server)["Collection"])
    assert len(frame) > 0
    assert server.count("getSeries") == 2


@pytest.mark.parametrize("kind", ["html", "invalid_json"])
def test_unparsable_answers_raise_a_clear_error(client, server, kind):
    server.faults.add(kind, endpoint="getPatient")
    with pytest.raises(TCIAResponseError, match="expected JSON"):
        client.patients(some_series(server)["Collection"])


def test_an_endless_body_is_cut_off(server, tmp_cache):
    server.faults.add("endless", endpoint="getPatient")
    client = TCIAClient(api_url=server.api_url, cache_dir=tmp_cache, retries=0, query_timeout=1)
    start = time.monotonic()
    with pytest.raises(TCIAResponseError, match="still sending"):
        client.patients("X")
    assert time.monotonic() - start < 10


def test_a_silent_server_times_out(server, tmp_cache):
    server.faults.add("hang", endpoint="getPatient")
    client = TCIAClient(api_url=server.api_url, cache_dir=tmp_cache, retries=0, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(TCIAConnectionError, match="timed out"):
        client.patients("X")
    assert time.monotonic() - start < 10


def test_a_refused_connection_to_a_typed_url_fails_at_once(tmp_cache):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = TCIAClient(
        api_url=f"http://127.0.0.1:{port}/", cache_dir=tmp_cache, retries=3, backoff_factor=5
    )
    start = time.monotonic()
    with pytest.raises(TCIAConnectionError, match="nothing listens at") as err:
        client.collections()
    assert err.value.permanent
    assert time.monotonic() - start < 4  # not retried (the first backoff alone is 5 s)
    assert len(str(err.value)) < 120


def test_the_client_pickles_and_works_after(client, server):
    copy = pickle.loads(pickle.dumps(client))
    assert copy.settings == client.settings
    assert len(copy.collections()) == len(client.collections())


def test_a_known_collection_routes_uid_calls_without_probing(client, server):
    uid = some_series(server, host="nlst")["SeriesInstanceUID"]
    assert len(client.sop_instance_uids(uid, collection="NLST")) > 0
    assert client.series_size(uid, collection="NLST")["ObjectCount"] > 0
    assert server.count(host="main") == 0


@pytest.mark.parametrize(
    ("filters", "field", "suggestion"),
    [
        ({"collection": "Pydicom-CT-Seires"}, "collection", "Pydicom-CT-Series"),
        ({"collection": "NLST", "patient_id": "10002"}, "patient_id", "100002"),
        ({"modality": "CTT"}, "modality", "CT"),
        ({"collection": "NLST", "body_part": "chst"}, "body_part", "CHEST"),
    ],
)
def test_a_name_the_archive_lacks_is_an_error_naming_the_closest(client, server, filters, field,
                                                                  suggestion):
    with pytest.raises(TCIAUnknownNameError) as caught:
        client.series(**filters)
    error = caught.value
    assert isinstance(error, LookupError) and isinstance(error, TCIANotFoundError)
    assert error.field == field and error.suggestions[0] == suggestion
    assert repr(filters[field]) in str(error) and repr(suggestion) in str(error)


def test_names_are_checked_only_when_the_answer_is_empty(client, server):
    assert len(client.series(collection="Pydicom-CT-Series", modality="ct")) > 0
    assert server.count() == 1  # no listing asked for
    server.clear_log()
    assert client.series(collection="NLST", modality="CR").empty  # real names, no rows
    assert server.count("getCollectionValues") == 2 and server.count("getModalityValues") == 2


def test_a_patient_of_another_collection_is_named_with_its_collection(client, server):
    with pytest.raises(TCIAUnknownNameError, match="no patient_id 'PYCT-001' in collection 'NLST'"):
        client.studies(collection="NLST", patient_id="PYCT-001")
    with pytest.raises(TCIAUnknownNameError, match="no patient_id 'NOBODY' in the archive$"):
        client.studies(patient_id="NOBODY")


def test_series_with_no_filter_covers_both_hosts(client, server):
    every = client.series()
    assert set(every["Collection"]) == set(server.archive.series["Collection"])
    assert len(every) == len(server.archive.series)

"""c.clinical(collection[, table=]): IDC's clinical tables of a collection, from the sample
archive's ``idc-open-metadata`` bucket (loopback S3) as clinical_index describes them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from intake_tcia import TCIAClient
from intake_tcia.errors import TCIABackendError, TCIAIntegrityError, TCIAUnknownNameError
from intake_tcia.testing.idc_tables import (
    IDCTablesServer,
    clinical_major,
    clinical_tables,
    put_clinical_tables,
)


@pytest.fixture
def tables(idc_index: Path, bucket):
    put_clinical_tables(bucket, idc_index)
    with IDCTablesServer(idc_index) as server:
        yield server


def make(idc_index, tables, bucket, cache):
    return TCIAClient(idc_index=idc_index, idc_index_url=tables.url, idc_url=bucket.url,
                      cache_dir=cache)


@pytest.fixture
def client(idc_index, tables, bucket, tmp_cache) -> TCIAClient:
    return make(idc_index, tables, bucket, tmp_cache)


def expected(idc_index: Path, table: str, patients: set[str]) -> pd.DataFrame:
    frame = clinical_tables(idc_index)[table].to_pandas()
    frame = frame[frame["dicom_patient_id"].isin(patients)].rename(
        columns={"dicom_patient_id": "PatientID"})
    return frame.reset_index(drop=True)


def patients_of(client: TCIAClient, collection_id: str) -> set[str]:
    return set(client.sql(
        f"SELECT DISTINCT PatientID FROM index WHERE collection_id = '{collection_id}'"
    )["PatientID"])


@pytest.mark.parametrize("given", ["NLST", "nlst", "Pydicom-CT-Series", "pydicom_ct_series"])
def test_a_collections_tables_with_patient_id_first_and_only_its_rows(client, idc_index, given):
    cid = given.lower().replace("-", "_")
    got = client.clinical(given)
    assert sorted(got) == sorted([f"{cid}_clinical", "sample_follow_up"])
    patients = patients_of(client, cid)
    for name, frame in got.items():
        assert list(frame.columns)[0] == "PatientID"
        assert "dicom_patient_id" not in frame.columns
        assert set(frame["PatientID"]) == patients
        pd.testing.assert_frame_equal(frame, expected(idc_index, name, patients))
    follow_up = got["sample_follow_up"]
    assert len(follow_up) == 2 * len(patients)  # several records per patient kept
    everyone = clinical_tables(idc_index)["sample_follow_up"].num_rows
    assert len(follow_up) < everyone  # the other collections' rows left out


def test_one_table(client, idc_index):
    frame = client.clinical("nlst", table="nlst_clinical")
    pd.testing.assert_frame_equal(
        frame, expected(idc_index, "nlst_clinical", patients_of(client, "nlst")))


def test_fetched_once_from_the_release_folder(client, bucket, idc_index, tables, tmp_cache):
    bucket.clear_log()
    first = client.clinical("NLST")
    prefix = f"bigquery_export/idc_v{clinical_major(idc_index)}_clinical/"
    asked = [r for r in bucket.requests if r.params.get("bucket") == "idc-open-metadata"]
    assert {r.endpoint for r in asked} == {"ListObjectsV2", "GetObject"}
    assert all((r.params.get("key") or r.params.get("prefix")).startswith(prefix) for r in asked)
    bucket.clear_log()
    again = make(idc_index, tables, bucket, tmp_cache).clinical("nlst")
    assert bucket.requests == []
    assert tables.count("clinical_index") == 1
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])


def test_unknown_collection_or_table_before_any_request(client, bucket, tables):
    bucket.clear_log()
    with pytest.raises(TCIAUnknownNameError, match="did you mean 'nlst'|did you mean 'NLST'"):
        client.clinical("nlts")
    assert tables.requests == [] and bucket.requests == []
    with pytest.raises(TCIABackendError, match="did you mean 'nlst_clinical'"):
        client.clinical("NLST", table="nlst_clinicl")
    assert bucket.requests == []  # only clinical_index was fetched
    with pytest.raises(TypeError):
        client.clinical(None)


def test_an_altered_object_is_not_kept(client, bucket, tmp_cache):
    bucket.faults.add("alter", endpoint="GetObject")
    with pytest.raises(TCIAIntegrityError, match="MD5"):
        client.clinical("NLST", table="nlst_clinical")
    assert not list((tmp_cache / "idc-clinical").rglob("*.parquet"))
    assert len(client.clinical("NLST", table="nlst_clinical")) > 0  # asked again: fine

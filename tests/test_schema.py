"""Typed DataFrames from NBIA rows: fixed columns, dtypes, dropped keys, the three date styles."""

import json
from pathlib import Path

import pandas as pd
import pytest

from intake_tcia.schema import (
    SCHEMAS,
    frame_from_csv,
    frame_from_records,
    parse_dates,
    records_from_csv,
)

DATA = Path(__file__).parent / "data"


def test_every_endpoint_gives_the_same_columns_for_no_rows_and_for_rows_with_dropped_keys():
    for endpoint, schema in SCHEMAS.items():
        empty = frame_from_records([], schema)
        one = frame_from_records([{schema.names[0]: "x"}], schema)
        assert list(empty.columns) == schema.names, endpoint
        assert list(one.columns) == schema.names, endpoint
        assert (empty.dtypes == one.dtypes).all(), endpoint


def test_dtypes_of_series_columns():
    frame = frame_from_records(
        [{"SeriesInstanceUID": "1.2.3", "ImageCount": 48, "FileSize": 25273786}],
        SCHEMAS["getSeries"],
    )
    assert frame["ImageCount"].dtype == "Int64"
    assert frame["FileSize"].dtype == "Int64"
    assert frame["SeriesDate"].dtype == "datetime64[ns]"
    assert frame["AnnotationsFlag"].dtype == "boolean"
    assert pd.api.types.is_string_dtype(frame["SeriesInstanceUID"])
    assert frame.loc[0, "FileSize"] == 25273786
    assert pd.isna(frame.loc[0, "Modality"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("05-27-2015", "2015-05-27"),
        ("2015-05-27 17:12:21.0", "2015-05-27 17:12:21"),
        ("Mon Nov 04 11:45:52 UTC 2013", "2013-11-04 11:45:52"),
        ("20160427", "2016-04-27"),
    ],
)
def test_the_date_styles_of_nbia(text, expected):
    parsed = parse_dates(pd.Series([text, None, ""]))
    assert parsed.dtype == "datetime64[ns]"
    assert parsed[0] == pd.Timestamp(expected)
    assert parsed[1:].isna().all()


def test_patient_id_is_normalised_and_counts_keys_are_named_as_their_values():
    patients = frame_from_records([{"PatientId": "P1", "Collection": "C"}], SCHEMAS["getPatient"])
    assert patients.loc[0, "PatientID"] == "P1"
    assert "PatientId" not in patients.columns
    counts = frame_from_records(
        [{"bodyPart": "CHEST", "count": 3, "Authorized": 1}],
        SCHEMAS["getBodyPartValuesAndCounts"],
    )
    assert counts.to_dict("records") == [{"BodyPartExamined": "CHEST", "Count": 3, "Authorized": 1}]


def test_bare_values_and_empty_objects():
    modalities = frame_from_records(["CT", "MR"], SCHEMAS["getModalityValues"])
    assert modalities["Modality"].tolist() == ["CT", "MR"]
    body_parts = frame_from_records(
        [{}, {"BodyPartExamined": "CHEST"}], SCHEMAS["getBodyPartValues"]
    )
    assert body_parts["BodyPartExamined"].isna().tolist() == [True, False]


def test_real_v2_rows_with_dropped_keys_and_old_date_style():
    rows = json.loads((DATA / "v2_getSeries_Soft-tissue-Sarcoma_first3.json").read_text())
    frame = frame_from_records(rows, SCHEMAS["getSeries"])
    assert len(frame) == 3
    assert frame["SeriesDate"].notna().all()
    assert frame["ImageCount"].tolist() == [r["ImageCount"] for r in rows]
    assert frame.loc[0, "SeriesDate"] == pd.Timestamp("2003-12-12")


def test_quoted_csv_of_series_metadata():
    text = (DATA / "getSeriesMetadata_200_example.csv").read_text()
    frame = frame_from_csv(text, SCHEMAS["getSeriesMetadata"])
    assert len(frame) == 1
    assert frame.loc[0, "SeriesNumber"] == 500  # "500.000000"
    assert frame.loc[0, "PixelSpacing(mm)-Row"] == pytest.approx(0.878906)
    assert frame.loc[0, "DateReleased"] == pd.Timestamp("2016-10-19")
    assert pd.isna(frame.loc[0, "EthnicGroup"])  # "" is missing
    assert list(frame_from_csv("", SCHEMAS["getSeriesMetadata"]).columns) == list(frame.columns)


def test_csv_records_are_the_text_the_frame_is_typed_from():
    schema = SCHEMAS["getSeriesMetadata"]
    text = (DATA / "getSeriesMetadata_200_example.csv").read_text()
    [record] = records_from_csv(text, schema)
    frame = frame_from_csv(text, schema)
    assert record.keys() == set(frame.columns)
    assert record["SeriesNumber"] == "500.000000" and record["EthnicGroup"] is None
    assert record["SeriesInstanceUID"] == frame.loc[0, "SeriesInstanceUID"]
    assert records_from_csv("", schema) == []


def test_csv_records_of_unusual_texts():
    schema = SCHEMAS["getSeriesMetadata"]
    header = '"SeriesInstanceUID","SeriesDescription","PatientId","PatientID"\n'
    # a byte order mark; an old and a new spelling of one column: the first, as frames keep it
    [record] = records_from_csv("\ufeff" + header + '"1.2","d","p1","p2"\n', schema)
    assert record == {"SeriesInstanceUID": "1.2", "SeriesDescription": "d", "PatientID": "p1"}
    # a field over the csv module's limit: read as frame_from_csv reads it
    long = "x" * 200_000
    [record] = records_from_csv(header + f'"1.2","{long}","p1","p2"\n', schema)
    assert record["SeriesDescription"] == long and record["SeriesInstanceUID"] == "1.2"


def test_counts_beyond_int64_are_missing_not_an_error():
    rows = [{"ImageCount": 10**30}, {"ImageCount": float("inf")}, {"ImageCount": "1e400"},
            {"ImageCount": 7}]
    frame = frame_from_records(rows, SCHEMAS["getSeries"])
    assert frame["ImageCount"].dtype == "Int64"
    assert frame["ImageCount"].isna().tolist() == [True, True, True, False]
    assert frame.loc[3, "ImageCount"] == 7

"""Tests of intake_tcia._validate: UIDs and dates checked before any request."""

from __future__ import annotations

import datetime as dt
import re

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intake_tcia._validate import format_query_date, validate_date, validate_uid


def is_dicom_uid(text: str) -> bool:
    """PS3.5 section 9.1 read independently, leading zeros allowed (real archives have them)."""
    parts = text.split(".")
    return len(text) <= 64 and all(
        p != "" and p.isascii() and p.isdigit() for p in parts
    )


@pytest.mark.parametrize(
    "uid",
    ["0", "1.2", "1.2.840.10008.1.2.1", "2.25.0", "1." + "2" * 62, "1.02", "01.2",
     "1.3.6.1.4.1.14519.5.2.1.7695.4001.306204232344341694648035234440"],
)
def test_valid_uids(uid):
    assert validate_uid(uid) == uid
    assert validate_uid(f" {uid}\n") == uid


@pytest.mark.parametrize(
    "uid",
    ["", " ", "1.", ".1", "1..2", "1.2a", "1.2 3", "1,2", "1.2.3\n4",
     "\u0661.\u0662", "１.２", "1." + "2" * 63, "-1.2"],
)
def test_invalid_uids_name_parameter_and_value(uid):
    with pytest.raises(ValueError, match=rf"^StudyInstanceUID {re.escape(repr(uid))} is not"):
        validate_uid(uid, "StudyInstanceUID")


@pytest.mark.parametrize("value", [None, 1.2, 12, b"1.2", ["1.2"]])
def test_uid_must_be_a_string(value):
    with pytest.raises(TypeError, match=r"^series_uid must be a str"):
        validate_uid(value, "series_uid")


@given(st.text(alphabet="0123456789. \u0660x", max_size=70))
def test_uid_validator_agrees_with_the_standard(text):
    stripped = text.strip()
    if is_dicom_uid(stripped):
        assert validate_uid(text) == stripped
    else:
        with pytest.raises(ValueError, match="SeriesInstanceUID"):
            validate_uid(text)


@given(st.lists(st.integers(0, 10**30), min_size=1, max_size=12))
def test_generated_uids_pass_when_short_enough(parts):
    uid = ".".join(map(str, parts))
    if len(uid) <= 64:
        assert validate_uid(uid) == uid
    else:
        with pytest.raises(ValueError, match="at most 64"):
            validate_uid(uid)


# --- dates -----------------------------------------------------------------------------------

DAY = dt.date(2015, 5, 27)


@pytest.mark.parametrize(
    "value",
    [DAY, dt.datetime(2015, 5, 27, 23, 59), pd.Timestamp("2015-05-27 17:12:21"),
     pd.Timestamp("2015-05-27", tz="UTC"), "2015-05-27", "05-27-2015", " 2015-05-27 "],
)
def test_dates_accepted(value):
    result = validate_date(value, "from_date")
    assert result == DAY and type(result) is dt.date


@pytest.mark.parametrize(
    "value",
    ["", "2015-5-27", "27-05-2015x", "2015/05/27", "2015-02-30", "13-01-2015", "20150527",
     "2015-W01-1", "yesterday", pd.NaT, 20150527, None, 1.5],
)
def test_bad_dates_name_the_parameter(value):
    with pytest.raises(ValueError, match=r"^from_date "):
        validate_date(value, "from_date")


def test_format_query_date():
    assert format_query_date(DAY) == "05-27-2015"
    assert format_query_date(dt.date(5, 1, 2)) == "01-02-0005"


@given(st.dates())
def test_date_round_trips(day):
    text = format_query_date(day)
    assert re.fullmatch(r"\d\d-\d\d-\d{4}", text)
    assert validate_date(text, "d") == day
    assert validate_date(day.isoformat(), "d") == day
    assert validate_date(dt.datetime.combine(day, dt.time(12)), "d") == day

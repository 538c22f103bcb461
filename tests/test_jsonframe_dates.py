"""Dates parsed in Arrow while a JSON answer arrives give the frame the row-by-row reader gives."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from intake_tcia._jsonframe import JSONFrame
from intake_tcia.schema import SCHEMAS, frame_from_records

CASES = {
    "v4 dates": ["05-27-2015", "01-02-1999", None],
    "an impossible day": ["05-27-2015", "02-30-2015"],
    "an impossible month": ["05-27-2015", "13-01-2015"],
    "an empty date": ["05-27-2015", ""],
    "another style among them": ["05-27-2015", "2015-05-27 17:12:21.0"],
    "out of datetime64[ns]": ["05-27-2015", "01-01-1500"],
    "short fields": ["5-27-2015"],
}


@pytest.mark.parametrize("dates", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("batch_bytes", [1, 1 << 20])
def test_dates_are_read_as_the_rows_would_give_them(dates: list, batch_bytes: int) -> None:
    rows = [{"SeriesInstanceUID": f"1.2.{i}", "SeriesDate": d, "ImageCount": i}
            for i, d in enumerate(dates)]
    parser = JSONFrame(SCHEMAS["getSeries"], batch_bytes=batch_bytes)
    parser.feed(json.dumps(rows).encode())
    frame = parser.close()
    pd.testing.assert_frame_equal(frame, frame_from_records(rows, SCHEMAS["getSeries"]))
    assert str(frame["SeriesDate"].dtype) == "datetime64[ns]"

"""A JSON array parsed as its bytes arrive, however split: JSONRows gives what json.loads gives,
JSONFrame what frame_from_records gives for those rows."""

import json

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intake_tcia._jsonframe import JSONFrame
from intake_tcia._jsonrows import JSONRows
from intake_tcia.schema import SCHEMAS, frame_from_records

scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def parse(body: bytes, cuts: list[int], rows=None):
    rows = JSONRows() if rows is None else rows
    start = 0
    for cut in sorted(c % (len(body) + 1) for c in cuts):
        rows.feed(body[start:cut])
        start = max(start, cut)
    rows.feed(body[start:])
    return rows.close()


@given(
    st.lists(values, max_size=8),
    st.lists(st.integers(min_value=0), max_size=6),
    st.sampled_from(["", " ", "\n", " \r\n\t"]),
)
def test_any_array_split_anywhere_parses_as_json_loads_does(array, cuts, space):
    body = json.dumps(array, ensure_ascii=False, separators=("," + space, ":")).encode()
    assert parse(space.encode() + body + space.encode(), cuts) == array


@given(values, st.lists(st.integers(min_value=0), max_size=4))
def test_a_value_that_is_not_an_array_is_one_row(value, cuts):
    body = json.dumps(value).encode()
    expected = value if isinstance(value, list) else [value]
    assert parse(body, cuts) == expected


def test_numbers_cut_at_a_boundary_are_not_taken_early():
    rows = JSONRows()
    rows.feed(b"[12")
    assert rows.rows == []
    rows.feed(b"34, 5]")
    assert rows.close() == [1234, 5]


def test_braces_inside_strings_never_end_a_batch():
    rows = [{"a": "x}"}, {"b": '},{"c": 1}'}, {"d": "]}"}, {"e": 2}]
    body = json.dumps(rows).encode()
    for cut in range(len(body) + 1):
        assert parse(body, [cut]) == rows
    assert parse(body, list(range(0, len(body), 3))) == rows


def test_multibyte_characters_split_across_chunks():
    body = json.dumps([{"name": "é中✓"}], ensure_ascii=False).encode()
    assert parse(body, list(range(len(body)))) == [{"name": "é中✓"}]


INVALID = [
    b'[{"Collection":"A"},{"Collection":',  # cut off
    b'[{"a":1} {"b":2}]',  # no comma
    b"[1,,2]",
    b"[1,]",
    b'[{"a":1},]',
    b'[{"a":1}{"b":2}]',
    b'[{"a":1}] {"b":2}',
    b"[1] trailing",
    b"<html><body>Service unavailable</body></html>",
    b"[",
    b"[" * 100_000 + b"]" * 100_000,  # nested too deeply for the parser
]


@pytest.mark.parametrize("body", INVALID)
def test_invalid_bodies_raise_value_error_on_close(body):
    with pytest.raises(ValueError):
        parse(body, [len(body) // 2])


def test_empty_and_blank_bodies_are_no_rows():
    assert parse(b"", []) == []
    assert parse(b"  \n", []) == []
    assert parse(b"[]", []) == []


# -- JSONFrame: typed columns straight from the bytes ---------------------------------------------

SERIES = SCHEMAS["getSeries"]
NBIA_ROW = {
    "SeriesInstanceUID": "1.2.3",
    "Modality": "CT",
    "SeriesDate": "05-27-2015",
    "SeriesNumber": 3,
    "AnnotationsFlag": True,
    "PatientId": "P1",
    "ImageCount": 48,
    "FileSize": 25273786,
    "Authorized": 1,
}


def frame(body: bytes, cuts: list[int], schema=SERIES, batch_bytes: int = 1) -> pd.DataFrame:
    return parse(body, cuts, JSONFrame(schema, batch_bytes))


def test_nbia_rows_become_arrow_columns_batch_by_batch():
    rows = [{**NBIA_ROW, "SeriesInstanceUID": f"1.2.{i}", "ImageCount": i} for i in range(50)]
    body = json.dumps(rows).encode()
    parser = JSONFrame(SERIES, batch_bytes=500)
    for start in range(0, len(body), 300):
        parser.feed(body[start : start + 300])
    assert len(parser._parts) > 3
    assert all(isinstance(part, pa.Table) for part in parser._parts)  # no rows of dicts kept
    result = parser.close()
    pd.testing.assert_frame_equal(result, frame_from_records(rows, SERIES))
    assert result["ImageCount"].dtype == "Int64" and result["SeriesDate"].dtype == "datetime64[ns]"


@pytest.mark.parametrize(
    "rows",
    [
        [{"PatientId": "a"}, {"PatientID": "b"}],  # two spellings: the first one wins
        [{"PatientId": "a", "PatientID": "b"}],
        [{"PatientId": None}, {"PatientID": "b"}],
        [{"X": 1, "PatientID": "q"}, {"SeriesNumber": 2.0}, {"Y": [1, {"z": None}]}],
        [{}, {}],
        [{"SeriesNumber": "0012", "ImageCount": 1.0, "AnnotationsFlag": "YES"}],
        [{"Modality": 7, "FileSize": 2**53}],
        [NBIA_ROW, "CT", None],
    ],
)
def test_rows_the_structs_do_not_fit_give_what_frame_from_records_gives(rows):
    body = json.dumps(rows).encode()
    for cut in range(0, len(body) + 1, 7):
        pd.testing.assert_frame_equal(frame(body, [cut]), frame_from_records(rows, SERIES))
    pd.testing.assert_frame_equal(frame(body, []), frame_from_records(rows, SERIES))


def test_bytes_only_json_loads_reads_give_what_it_gives():
    for body in (
        b'[{"SeriesNumber": NaN}, {"Modality": "CT"}]',
        b'[{"Modality": "C\xffT"}]',
        b'{"Modality": "CT"}',
    ):
        rows = json.loads(body.decode("utf-8", "replace"))
        rows = rows if isinstance(rows, list) else [rows]
        pd.testing.assert_frame_equal(frame(body, [5]), frame_from_records(rows, SERIES))


def test_an_empty_body_gives_the_empty_frame():
    for body in (b"", b" \n", b"[]", b"[ ]"):
        pd.testing.assert_frame_equal(frame(body, [1]), frame_from_records([], SERIES))


@pytest.mark.parametrize("body", INVALID)
def test_invalid_bodies_raise_value_error_on_close_of_a_frame(body):
    with pytest.raises(ValueError):
        frame(body, [len(body) // 2])


@pytest.mark.parametrize("parser", [JSONRows, lambda: JSONFrame(SERIES, batch_bytes=1)])
def test_braces_inside_a_long_string_cost_linear_work(parser):
    text = "}," * (2 << 20)  # every "}" a candidate end of a row, none of them one
    body = json.dumps([{"Modality": "CT"}, {"Modality": text}]).encode()
    rows, tried = parser(), []
    take = rows._take
    rows._take = lambda array: (tried.append(len(array)), take(array))
    for start in range(0, len(body), 1 << 14):
        rows.feed(body[start : start + (1 << 14)])
    result = rows.close()
    found = result[1]["Modality"] if isinstance(result, list) else result.loc[1, "Modality"]
    assert found == text
    assert sum(tried) <= 4 * len(body)  # each try at twice the length of the last

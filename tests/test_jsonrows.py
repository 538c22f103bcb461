"""JSONRows: a JSON array parsed as its bytes arrive gives what json.loads gives, however split."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intake_tcia._jsonrows import JSONRows

scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def parse(body: bytes, cuts: list[int]) -> list:
    rows = JSONRows()
    start = 0
    for cut in sorted(c % (len(body) + 1) for c in cuts):
        rows.feed(body[start:cut])
        start = max(start, cut)
    rows.feed(body[start:])
    return rows.close()


@given(st.lists(values, max_size=8), st.lists(st.integers(min_value=0), max_size=6),
       st.sampled_from(["", " ", "\n", " \r\n\t"]))
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


@pytest.mark.parametrize(
    "body",
    [
        b'[{"Collection":"A"},{"Collection":',  # cut off
        b'[{"a":1} {"b":2}]',  # no comma
        b"[1,,2]",
        b"[1,]",
        b'[{"a":1},]',
        b'[{"a":1}{"b":2}]',
        b"[1] trailing",
        b"<html><body>Service unavailable</body></html>",
        b"[",
    ],
)
def test_invalid_bodies_raise_value_error_on_close(body):
    with pytest.raises(ValueError):
        parse(body, [len(body) // 2])


def test_empty_and_blank_bodies_are_no_rows():
    assert parse(b"", []) == []
    assert parse(b"  \n", []) == []
    assert parse(b"[]", []) == []

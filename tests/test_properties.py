"""Property-based tests (hypothesis) of response parsing and of the ``.tcia`` round trip.

Parsing: whatever keys the server drops, whichever of NBIA's date styles it uses, JSON or CSV,
rows or an empty body, every endpoint's frame has the same columns and dtypes, and each value is
the one sent. Manifests: the Java properties syntax a hand-made or foreign ``.tcia`` may use
(separators, comments, blank lines, continuations, indentation) reads as the plain form does,
and manifests written from DataFrames read back as the series they list (the byte-for-byte
round trip itself is in tests/test_manifest.py).
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intake_tcia._jsonframe import JSONFrame
from intake_tcia.manifest import (
    DEFAULT_DOWNLOAD_SERVER_URL,
    NLST_DOWNLOAD_SERVER_URL,
    Manifest,
    as_series_uids,
    read_manifest,
    write_manifest,
)
from intake_tcia.schema import SCHEMAS, STRING_DTYPE, frame_from_csv, frame_from_records

#: The dtype each kind of column must have.
DTYPES = {"str": STRING_DTYPE, "int": "Int64", "date": "datetime64[ns]", "bool": "boolean",
          "float": "Float64"}
#: NBIA's date styles: v4, v1/v2 Timestamp, v1/v2 java.util.Date, DICOM DA, v1/v2 query style.
DATE_STYLES = ("%m-%d-%Y", "%Y-%m-%d %H:%M:%S.0", "%a %b %d %H:%M:%S UTC %Y", "%Y%m%d",
               "%d/%m/%Y")
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])

# -- values of each kind: (what the server sends, what the frame must hold) ----------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
                min_size=1, max_size=12).filter(lambda s: s.strip() == s and s.strip())
_strings = st.one_of(
    _text.map(lambda s: (s, s)),
    st.from_regex(r"0[0-9]{1,6}", fullmatch=True).map(lambda s: (s, s)),  # "007" stays "007"
)
_ints = st.integers(-(2**53), 2**53).flatmap(
    lambda n: st.sampled_from([(n, n), (str(n), n)])
)
_bools = st.booleans().flatmap(
    lambda b: st.sampled_from([(b, b), ("true" if b else "false", b), ("Yes" if b else "NO", b)])
)
_floats = st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 4)).flatmap(
    lambda x: st.sampled_from([(x, x), (repr(x), x)])
)


@st.composite
def _dates(draw: st.DrawFn) -> tuple[str, pd.Timestamp]:
    moment = draw(st.datetimes(datetime(1900, 1, 1), datetime(2100, 12, 31)))
    moment = moment.replace(microsecond=0)
    style = draw(st.sampled_from(DATE_STYLES))
    if "%H" not in style:
        moment = moment.replace(hour=0, minute=0, second=0)
    return moment.strftime(style), pd.Timestamp(moment)


VALUES = {"str": _strings, "int": _ints, "date": _dates(), "bool": _bools, "float": _floats}
#: Values that survive CSV too (CSV has no types: everything arrives as text).
CSV_VALUES = {**VALUES, "int": _ints.map(lambda p: (str(p[1]), p[1])),
              "bool": _bools.map(lambda p: (str(p[0]).lower(), p[1])),
              "float": _floats.map(lambda p: (repr(p[1]), p[1]))}


@st.composite
def answers(draw: st.DrawFn, values: dict[str, Any] = VALUES, *, min_rows: int = 0) -> tuple:
    """An endpoint and rows as NBIA sends them (null keys dropped at random, server key names
    used where they differ) with the values each row's columns must hold."""
    endpoint = draw(st.sampled_from(sorted(SCHEMAS)))
    schema = SCHEMAS[endpoint]
    spellings: dict[str, list[str]] = {}
    for key, column in schema.renames.items():
        spellings.setdefault(column, [column]).append(key)
    # one spelling of each column per answer: a server does not change it from row to row
    keys = {name: draw(st.sampled_from(spellings.get(name, [name]))) for name in schema.names}
    rows, expected = [], []
    for _ in range(draw(st.integers(min_rows, 4))):
        row, want = {}, {}
        for name, kind in schema.columns.items():
            if draw(st.booleans()):  # dropped, as NBIA drops null keys
                continue
            sent, value = draw(values[kind])
            row[keys[name]], want[name] = sent, value
        rows.append(row)
        expected.append(want)
    return endpoint, rows, expected


def _check_frame(frame: pd.DataFrame, endpoint: str, expected: list[dict[str, Any]]) -> None:
    schema = SCHEMAS[endpoint]
    assert list(frame.columns) == schema.names
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        c: str(pd.Series(dtype=DTYPES[k]).dtype) for c, k in schema.columns.items()
    }
    assert len(frame) == len(expected)
    for i, want in enumerate(expected):
        for name in schema.names:
            got = frame.at[i, name]
            if name not in want:
                assert pd.isna(got), (name, got)
            elif schema.columns[name] == "float":
                assert got == pytest.approx(want[name]), name
            else:
                assert got == want[name], (name, got, want[name])


# -- response parsing -----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(answers())
def test_json_rows_give_fixed_columns_dtypes_and_the_values_sent(answer: tuple) -> None:
    endpoint, rows, expected = answer
    _check_frame(frame_from_records(rows, SCHEMAS[endpoint]), endpoint, expected)


@PROPERTY_SETTINGS
@given(answers())
def test_a_row_parses_the_same_alone_or_among_others(answer: tuple) -> None:
    endpoint, rows, _ = answer
    schema = SCHEMAS[endpoint]
    whole = frame_from_records(rows, schema)
    for i, row in enumerate(rows):
        alone = frame_from_records([row], schema)
        pd.testing.assert_frame_equal(whole.iloc[[i]].reset_index(drop=True), alone)


def _csv(rows: list[dict[str, str]], quoted: bool, order: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=order, restval="", lineterminator="\n",
                            quoting=csv.QUOTE_ALL if quoted else csv.QUOTE_MINIMAL)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@PROPERTY_SETTINGS
@given(answers(CSV_VALUES, min_rows=1), st.booleans(), st.randoms(use_true_random=False))
def test_csv_gives_what_json_gives(answer: tuple, quoted: bool, rng: Any) -> None:
    endpoint, rows, expected = answer
    schema = SCHEMAS[endpoint]
    keys = sorted({key for row in rows for key in row})
    if not keys:  # NBIA sends no CSV header without a column
        return
    rng.shuffle(keys)
    frame = frame_from_csv(_csv(rows, quoted, keys), schema)
    _check_frame(frame, endpoint, expected)
    pd.testing.assert_frame_equal(frame, frame_from_records(rows, schema))


@PROPERTY_SETTINGS
@given(st.sampled_from(sorted(SCHEMAS)), st.sampled_from(["", "\n", "  \r\n", "\t"]))
def test_an_empty_body_gives_the_empty_frame_of_the_endpoint(endpoint: str, body: str) -> None:
    schema = SCHEMAS[endpoint]
    for frame in (frame_from_csv(body, schema), frame_from_records([], schema)):
        _check_frame(frame, endpoint, [])


@PROPERTY_SETTINGS
@given(answers(min_rows=1), st.lists(st.from_regex(r"X[A-Za-z]{1,8}", fullmatch=True),
                                     min_size=1, max_size=3, unique=True))
def test_unknown_keys_follow_the_fixed_columns_as_text(answer: tuple, extras: list[str]) -> None:
    endpoint, rows, expected = answer
    rows = [{**row, **{key: 7 for key in extras}} for row in rows]
    frame = frame_from_records(rows, SCHEMAS[endpoint])
    assert list(frame.columns) == SCHEMAS[endpoint].names + extras
    assert (frame[extras] == "7").all().all()
    _check_frame(frame[SCHEMAS[endpoint].names], endpoint, expected)


@PROPERTY_SETTINGS
@given(answers(), st.lists(st.integers(min_value=0), max_size=6), st.integers(1, 400),
       st.lists(st.from_regex(r"X[A-Za-z]{1,8}", fullmatch=True), max_size=2, unique=True),
       st.sampled_from(["", " ", "\n "]))
def test_json_bytes_parsed_as_they_arrive_give_the_frame_of_their_rows(
    answer: tuple, cuts: list[int], batch_bytes: int, extras: list[str], space: str
) -> None:
    endpoint, rows, _ = answer
    rows = [{**row, **{key: 7 for key in extras[: i % 3]}} for i, row in enumerate(rows)]
    body = json.dumps(rows, separators=("," + space, ":")).encode() if rows else b""
    parser = JSONFrame(SCHEMAS[endpoint], batch_bytes)
    start = 0
    for cut in sorted(c % (len(body) + 1) for c in cuts):
        parser.feed(body[start:cut])
        start = max(start, cut)
    parser.feed(body[start:])
    pd.testing.assert_frame_equal(parser.close(), frame_from_records(rows, SCHEMAS[endpoint]))


# -- .tcia manifests ------------------------------------------------------------------------------

_uids = st.lists(st.integers(0, 10**12), min_size=2, max_size=8).map(
    lambda parts: ".".join(map(str, parts))
).filter(lambda uid: len(uid) <= 64)
_keys = st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,15}", fullmatch=True).filter(
    lambda k: k != "ListOfSeriesToDownload"
)
_values = st.from_regex(r"[A-Za-z0-9/:.=_-]([A-Za-z0-9/:.=_ -]{0,30}[A-Za-z0-9/:._-])?",
                        fullmatch=True)
_SEPARATORS = ("=", ":", " = ", "\t: ", " ", "\t", "  =")
_COMMENTS = ("", "# a comment", "! another", "   ", "\t# indented comment")


@st.composite
def java_header_lines(draw: st.DrawFn, properties: dict[str, str]) -> list[str]:
    """``properties`` written as java.util.Properties reads them, in any of its spellings."""
    lines = []
    for key, value in properties.items():
        lines += [draw(st.sampled_from(_COMMENTS)) for _ in range(draw(st.integers(0, 2)))]
        separators = [s for s in _SEPARATORS if value[:1] not in "=:" or s.strip()]
        line = draw(st.sampled_from(["", " ", "\t"])) + key + draw(st.sampled_from(separators))
        # split the value over continuation lines, never before a blank (Java drops those)
        cuts = sorted(draw(st.sets(st.integers(1, max(len(value) - 1, 1)), max_size=2)))
        pieces = [value[a:b] for a, b in zip([0, *cuts], [*cuts, len(value)], strict=True)]
        pieces = [p for p in pieces if p]
        if any(p[0].isspace() for p in pieces[1:]):
            pieces = [value]
        for piece in pieces[:-1]:
            lines.append(line + piece + "\\")
            line = draw(st.sampled_from(["", "    ", "\t"]))
        lines.append(line + pieces[-1])
    return lines


@PROPERTY_SETTINGS
@given(
    st.lists(_uids, max_size=10),
    st.dictionaries(_keys, _values, max_size=5),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.data(),
)
def test_every_java_properties_spelling_reads_as_the_plain_one(
    series_uids: list[str], properties: dict[str, str], newline: str, data: st.DataObject
) -> None:
    plain = read_manifest(io.BytesIO(Manifest(series_uids, properties).to_text().encode()))
    lines = data.draw(java_header_lines(properties))
    lines.append(data.draw(st.sampled_from(
        ["ListOfSeriesToDownload=", "ListOfSeriesToDownload =", " ListOfSeriesToDownload:"]
    )))
    for uid in series_uids:
        lines += [data.draw(st.sampled_from(["", "# note"])) for _ in range(data.draw(
            st.integers(0, 1)))]
        lines.append(data.draw(st.sampled_from(["", " ", "\t"])) + uid
                     + data.draw(st.sampled_from(["", " ", "\t"])))
    text = newline.join(lines) + newline
    spelled = read_manifest(io.BytesIO(text.encode()))
    assert (spelled.series_uids, spelled.properties) == (plain.series_uids, plain.properties)
    assert (spelled.series_uids, spelled.properties) == (series_uids, properties)


@PROPERTY_SETTINGS
@given(
    st.lists(_uids, min_size=1, max_size=12),
    st.sampled_from(["NLST", "nlst", "LIDC-IDRI", None]),
    st.booleans(),
)
def test_a_manifest_of_a_dataframe_lists_its_series_once_in_order(
    series_uids: list[str], collection: str | None, duplicate: bool
) -> None:
    if duplicate:
        series_uids = series_uids + series_uids[::-1]
    frame = pd.DataFrame({"SeriesInstanceUID": series_uids, "Collection": collection})
    distinct = list(dict.fromkeys(series_uids))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_manifest(frame, Path(tmp) / "m.tcia")
        back = read_manifest(path)
        assert as_series_uids(path) == distinct
    assert back.series_uids == distinct == as_series_uids(frame) == as_series_uids(back)
    nlst = collection is not None and collection.upper() == "NLST"
    assert back.download_server_url == (
        NLST_DOWNLOAD_SERVER_URL if nlst else DEFAULT_DOWNLOAD_SERVER_URL
    )
    assert read_manifest(io.BytesIO(back.to_text().encode())) == back


@PROPERTY_SETTINGS
@given(st.lists(_uids, min_size=1, max_size=6), st.lists(_uids, min_size=1, max_size=6))
def test_nlst_and_other_collections_are_never_mixed_in_one_manifest(
    nlst: list[str], other: list[str]
) -> None:
    frame = pd.DataFrame({"SeriesInstanceUID": nlst + other,
                          "Collection": ["NLST"] * len(nlst) + ["LIDC-IDRI"] * len(other)})
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(ValueError, match="NLST"):
        write_manifest(frame, Path(tmp) / "m.tcia")

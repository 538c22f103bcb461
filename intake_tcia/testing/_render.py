"""Render result tables as NBIA v4 does (see reference/v4_formatting_rules.md).

JSON: an array of flat objects, null keys dropped per row, an EMPTY body (not ``[]``) for no rows.
CSV: quoted (``toCsvQuoted``) for several columns, plain for one column. XML and HTML in the
server's simple shapes. Bodies are produced in pieces so a 600k-row answer is never one string.
"""

from __future__ import annotations

import csv
import html
from collections.abc import Iterator

import numpy as np
import pandas as pd

#: ``format`` values the server accepts (case-insensitive); anything else is a 500.
FORMATS = ("json", "csv", "csvquoted", "csv-download", "html", "xml")
CONTENT_TYPES = {
    "json": "application/json",
    "csv": "text/csv",
    "csvquoted": "text/csv",
    "csv-download": "text/csv",
    "html": "text/html",
    "xml": "application/xml",
}
_CHUNK_ROWS = 20_000
# Each record is rendered with this first member, then split on it: inside a JSON string every
# quote is escaped, so the marker can only be structure.
_MARK_KEY, _MARK_VALUE = "\x01", "\x01"
_MARKER = '{"\\u0001":"\\u0001"'


def render(frame: pd.DataFrame, fmt: str) -> Iterator[bytes]:
    """Yield the body of ``frame`` in format ``fmt`` (nothing at all for no rows)."""
    if frame.empty:
        return iter(())
    if fmt == "json":
        return _json(frame)
    if fmt == "xml":
        return _xml(frame)
    if fmt == "html":
        return _html(frame)
    return _csv(frame, quoted=fmt != "csv" or frame.shape[1] > 1)


def _json(frame: pd.DataFrame) -> Iterator[bytes]:
    """JSON records, null keys dropped: rows sharing a null pattern are rendered together."""
    if frame.shape[1] > 64:
        raise ValueError("at most 64 columns")
    for start in range(0, len(frame), _CHUNK_ROWS):
        chunk = frame.iloc[start:start + _CHUNK_ROWS]
        present = chunk.notna().to_numpy()
        keys = present @ (np.uint64(1) << np.arange(present.shape[1], dtype=np.uint64))
        patterns, first, codes = np.unique(keys, return_index=True, return_inverse=True)
        lines: list[str] = [""] * len(chunk)
        for code, row in enumerate(first):
            mask = present[row]
            rows = np.flatnonzero(codes.reshape(-1) == code)
            part = chunk.iloc[rows, np.flatnonzero(mask)]
            part.insert(0, _MARK_KEY, _MARK_VALUE)
            text = part.to_json(orient="records", force_ascii=True)[1:-1]
            pieces = text.split(_MARKER)[1:]
            for row, piece in zip(rows, pieces, strict=True):
                lines[row] = "{" + piece.removeprefix(",").removesuffix(",")
        yield (("[" if start == 0 else ",") + ",".join(lines)).encode()
    yield b"]"


def _cells(frame: pd.DataFrame) -> Iterator[list[str]]:
    for start in range(0, len(frame), _CHUNK_ROWS):
        chunk = frame.iloc[start:start + _CHUNK_ROWS].astype(object)
        yield from chunk.where(chunk.notna(), "").astype(str).to_numpy().tolist()


def _csv(frame: pd.DataFrame, *, quoted: bool) -> Iterator[bytes]:
    quoting = csv.QUOTE_ALL if quoted else csv.QUOTE_NONE
    for start in range(0, len(frame), _CHUNK_ROWS):
        chunk = frame.iloc[start:start + _CHUNK_ROWS]
        yield chunk.to_csv(index=False, header=start == 0, quoting=quoting, na_rep="",
                           lineterminator="\n", escapechar=None if quoted else "\\").encode()


def _xml(frame: pd.DataFrame) -> Iterator[bytes]:
    yield b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Results>'
    kinds = {c: ("java.math.BigInteger" if pd.api.types.is_integer_dtype(frame[c])
                 else "java.lang.String") for c in frame.columns}
    for start in range(0, len(frame), _CHUNK_ROWS):
        parts = []
        for record in frame.iloc[start:start + _CHUNK_ROWS].to_dict("records"):
            parts.append("<Row>" + "".join(
                f"<{k} type='{kinds[k]}'>{html.escape(str(v))}</{k}>"
                for k, v in record.items() if not pd.isna(v)) + "</Row>")
        yield "".join(parts).encode()
    yield b"</Results>"


def _html(frame: pd.DataFrame) -> Iterator[bytes]:
    head = "".join(f"<TH>{html.escape(c)}</TH>" for c in frame.columns)
    yield f"<P ALIGN='center'><TABLE BORDER=1><TR>{head}</TR>".encode()
    for cells in _cells(frame):
        yield ("<TR>" + "".join(f"<TD>{html.escape(c) or '&nbsp;'}</TD>" for c in cells)
               + "</TR>").encode()
    yield b"</TABLE></P>"

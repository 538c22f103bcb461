"""The rows of a JSON array, parsed in batches as its bytes arrive.

NBIA answers metadata queries with one JSON array of objects, hundreds of MB for a large
collection. Parsing the rows received so far while the rest is still arriving overlaps parsing
with receiving, and the whole text is never held in memory.

:class:`ArrayBatches` cuts the body into batches of whole rows: once at least ``batch_bytes``
have arrived, everything from the last parsed row up to the last ``}`` received is handed to
:meth:`ArrayBatches._take` as the text of an array. A ``}`` inside a string cannot
end a valid batch (the string would be left open), so a batch parses only when it ends at a real
row boundary; otherwise it is tried again once the buffer has doubled (which keeps the work
linear). Whatever is left, and any answer that is not an array (an object, an HTML page), is
parsed at the end, so errors surface from :meth:`ArrayBatches.close`. :class:`JSONRows` keeps
the rows as ``json.loads`` gives them; :class:`intake_tcia._jsonframe.JSONFrame` builds columns.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["ArrayBatches", "JSONRows", "loads"]

_SPACE = b" \t\n\r"
_COMMA = re.compile(rb"[ \t\n\r]*,")


def loads(text: bytes) -> Any:
    """``json.loads`` of UTF-8 ``text`` (bad bytes read as U+FFFD); ``ValueError`` if not JSON."""
    try:
        return json.loads(text.decode("utf-8", "replace"))
    except RecursionError as exc:  # nesting too deep for the parser: not an answer either
        raise ValueError("JSON nested too deeply") from exc


class ArrayBatches:
    """Feed it the bytes of a JSON answer; :meth:`close` parses the rest and gives the result.

    Subclasses parse the text of whole rows in :meth:`_take` and a value that is not an array in
    :meth:`_take_value`, and say what :meth:`close` returns in :meth:`_result`.

    Parameters
    ----------
    batch_bytes : int
        Wait for at least this many bytes before parsing a batch.
    """

    def __init__(self, batch_bytes: int = 1) -> None:
        self._buffer = bytearray()  # received, not yet parsed
        self._state = "start"  # start, then rows (inside the array) or whole
        self._retry_at = batch_bytes  # buffered length at which to try a batch
        self._batch_bytes = batch_bytes
        self._searched = 0  # the buffer before this holds no "}" past the last tried one
        self._taken = False  # a batch has been parsed (the next must follow a comma)

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the body and parse the rows they complete.

        Linear in the body: leading white space is dropped as it arrives, and only new text is
        searched for the end of a row.
        """
        if self._state == "start":
            data = data.lstrip(_SPACE)
            if not data:
                return
            self._state = "rows" if data[:1] == b"[" else "whole"
            data = data[1:] if self._state == "rows" else data
        self._buffer += data
        if self._state == "rows" and len(self._buffer) >= self._retry_at:
            self._parse_batch()

    def close(self) -> Any:
        """Parse what is left and return the result; ``ValueError`` if the body is not JSON."""
        text, self._buffer = bytes(self._buffer), bytearray()
        if self._state == "whole":
            self._take_value(loads(text))
        elif self._state == "rows":
            text = text.rstrip(_SPACE)
            if not text.endswith(b"]"):
                raise ValueError("the array does not end with ']'")
            if text[:-1].strip(_SPACE):
                self._buffer = bytearray(text[:-1])
                array = self._array(len(self._buffer))
                if not array[1:-1].strip(_SPACE):
                    raise ValueError("a comma before ']'")
                self._take(array)
        return self._result()

    def _parse_batch(self) -> None:
        """Parse the rows up to the last ``}``; the part of the buffer searched before holds none
        after the last one tried."""
        end = self._buffer.rfind(b"}", self._searched) + 1
        self._searched = len(self._buffer)
        if end == 0:
            return
        try:
            self._take(self._array(end))
        except ValueError:  # the "}" is inside a string, or the rows are broken: wait
            self._retry_at = 2 * len(self._buffer)
            self._searched = 0
            return
        self._taken = True
        del self._buffer[:end]
        self._retry_at = self._batch_bytes
        self._searched = len(self._buffer)  # past the last "}"

    def _array(self, end: int) -> bytes:
        """The rows in the buffer up to ``end`` as the text of an array (one copy); after the
        rows taken so far they must follow a comma (``ValueError`` if not)."""
        start = 0
        if self._taken:
            comma = _COMMA.match(self._buffer)
            if comma is None:
                raise ValueError(f"expected ',' or ']' after a row, got {self._buffer[:20]!r}")
            start = comma.end()
        with memoryview(self._buffer) as view:
            return b"".join((b"[", view[start:end], b"]"))

    def _take(self, array: bytes) -> None:  # pragma: no cover - abstract
        """Parse ``array``, the text of an array of whole rows (``ValueError`` if it is not)."""
        raise NotImplementedError

    def _take_value(self, value: Any) -> None:  # pragma: no cover - abstract
        """Keep a parsed answer that is not an array."""
        raise NotImplementedError

    def _result(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class JSONRows(ArrayBatches):
    """The rows of a JSON answer as a list: ``json.loads`` of the array, parsed as it arrives.

    An empty body gives ``[]``; a value that is not an array gives ``[value]``. A body that is not
    valid JSON raises ``ValueError`` from :meth:`close`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Any] = []

    def _take(self, array: bytes) -> None:
        self.rows.extend(loads(array))

    def _take_value(self, value: Any) -> None:
        self.rows.extend(value if isinstance(value, list) else [value])

    def _result(self) -> list[Any]:
        return self.rows

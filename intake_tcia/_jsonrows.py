"""The rows of a JSON array, parsed as its bytes arrive.

NBIA answers metadata queries with one JSON array of objects, hundreds of MB for a large
collection. Parsing the rows received so far while the rest is still arriving overlaps parsing
with receiving, and the whole text is never held in memory.

Each step parses, with one ``json.loads``, everything from the last parsed row up to the last
``}`` received. A ``}`` inside a string cannot end a valid batch (the string would be left open),
so a batch parses only when it ends at a real row boundary; otherwise it is tried again once the
buffer has doubled (which keeps the work linear). One ``json.loads`` per batch, rather than one
per row, also lets the rows of a batch share their key strings, as ``json.loads`` of the whole
text would. Whatever is left, and any answer that is not an array (an object, an HTML page), is
parsed at the end, so errors surface from :meth:`JSONRows.close`.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

__all__ = ["JSONRows"]

_SPACE = " \t\n\r"


class JSONRows:
    """Feed it the bytes of a JSON answer; :meth:`close` gives the rows (a list).

    An empty body gives ``[]``; a value that is not an array gives ``[value]``. A body that is not
    valid JSON raises ``ValueError`` from :meth:`close`.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._text = ""  # received, not yet parsed
        self._state = "start"  # start, then rows (inside the array) or whole
        self._retry_at = 0  # buffered length at which a failed batch is tried again
        self.rows: list[Any] = []

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the body and parse the rows they complete.

        Linear in the body: leading white space is dropped as it arrives, and only the new text
        is searched for the end of a row.
        """
        new = self._decoder.decode(data)
        if self._state == "start":
            new = new.lstrip(_SPACE)
            if not new:
                return
            self._state = "rows" if new[0] == "[" else "whole"
            new = new[1:] if self._state == "rows" else new
        self._text += new
        if self._state == "rows" and len(self._text) >= self._retry_at:
            self._parse_batch(len(self._text) - len(new))

    def close(self) -> list[Any]:
        """Parse what is left and return the rows; ``ValueError`` if the body is not JSON."""
        self._text += self._decoder.decode(b"", final=True)
        if self._state == "start":
            if self._text.strip(_SPACE):  # pragma: no cover - feed() leaves start on any text
                raise ValueError("unparsed text")
            return []  # NBIA's empty body for no rows
        if self._state == "whole":
            value = json.loads(self._text)
            return value if isinstance(value, list) else [value]
        rest = self._after_comma(self._text) if self.rows else self._text
        self.rows.extend(json.loads("[" + rest))  # rest ends with the array's "]"
        return self.rows

    def _parse_batch(self, new_from: int) -> None:
        """Parse the rows up to the last ``}``; when the new text (from ``new_from``) has none,
        an earlier attempt already saw the same one."""
        end = self._text.rfind("}", new_from if self._retry_at == 0 else 0) + 1
        if end == 0:
            return
        try:
            text = self._after_comma(self._text[:end]) if self.rows else self._text[:end]
            batch = json.loads("[" + text + "]")
        except ValueError:  # the "}" is inside a string, or the rows are broken: wait
            self._retry_at = 2 * len(self._text)
            return
        self.rows.extend(batch)
        self._text = self._text[end:]
        self._retry_at = 0

    @staticmethod
    def _after_comma(text: str) -> str:
        """The text after the comma that must follow a parsed row (ValueError if it is not there,
        or if the array ends right after it)."""
        stripped = text.lstrip(_SPACE)
        if not stripped.startswith(","):
            if stripped.startswith("]"):
                return stripped
            raise ValueError(f"expected ',' or ']' after a row, got {stripped[:20]!r}")
        rest = stripped[1:]
        if rest.lstrip(_SPACE).startswith("]"):
            raise ValueError("a comma before ']'")
        return rest

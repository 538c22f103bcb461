"""Typed DataFrames straight from the bytes of a JSON answer, batch by batch as they arrive.

Each batch of rows (see :mod:`intake_tcia._jsonrows`) is decoded by msgspec into structs of the
endpoint's fields, under the server's key names and with their types checked, and becomes Arrow
columns at once: a batch's Python objects live only while it is parsed, and the answer is held
as compact columns. A batch the structs do not fit (a key the schema lacks, a value of another
type, two spellings of one column, JSON that only ``json.loads`` reads) is read by
``json.loads`` into rows instead, as :func:`~intake_tcia.schema.frame_from_records` reads them.
The batches are then typed together by :func:`~intake_tcia.schema.typed_frame`, so a frame is
the one ``frame_from_records`` gives for the same rows.
"""

from __future__ import annotations

import functools
import itertools
from operator import attrgetter
from typing import Any

import msgspec
import pandas as pd
import pyarrow as pa

from ._jsonrows import ArrayBatches, loads
from .schema import EndpointSchema, raw_frame, typed_frame

__all__ = ["JSONFrame"]

_BATCH_BYTES = 1 << 20  # the Python objects of one batch live at once: a few MB
#: Arrow memory for the columns comes from malloc, which hands freed batches back to the next
#: ones; Arrow's default pool (mimalloc) kept about 20 MB more of a 100,000-row answer.
_POOL = pa.system_memory_pool()
_PYTHON = {"str": str, "date": str, "int": int, "float": float, "bool": bool}
_ARROW = {
    "str": pa.large_string(),  # what pandas' str dtype holds: no copy on the way
    "date": pa.large_string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
}
_PANDAS = {
    pa.int64(): pd.Int64Dtype(),
    pa.float64(): pd.Float64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


class _Unfit(Exception):
    """A batch the structs cannot hold as it is."""


class _Layout:
    """The structs and Arrow types of one endpoint's rows, under the server's key names.

    A column with one spelling is always a column of the batch; a column with several (an old
    and a new name) keeps apart a key that is missing from a key sent as null, so that only the
    spellings a batch uses become its columns, as they would in ``pandas.DataFrame(rows)``.
    """

    def __init__(self, columns: tuple[tuple[str, str], ...], renames: tuple[tuple[str, str], ...]):
        kinds = dict(columns)
        keys = {name: name for name in kinds}
        keys.update((key, name) for key, name in renames if name in kinds)
        spellings: dict[str, list[str]] = {}
        for key, name in keys.items():
            spellings.setdefault(name, []).append(key)
        fields, rename, self.plain, self.spelled = [], {}, [], []
        #: Server keys of the date columns with one spelling: parsed once the batches are joined.
        self.dates = [key for key, name in keys.items()
                      if len(spellings[name]) == 1 and kinds[name] == "date"]
        for i, (key, name) in enumerate(keys.items()):
            field, kind = f"f{i}", kinds[name]
            rename[field] = key
            if len(spellings[name]) == 1:
                fields.append((field, _PYTHON[kind] | None, None))
                self.plain.append((field, key, _ARROW[kind]))
            else:
                fields.append((field, _PYTHON[kind] | None | msgspec.UnsetType, msgspec.UNSET))
                self.spelled.append((field, key, _ARROW[kind], name))
        row = msgspec.defstruct("Row", fields, rename=rename, forbid_unknown_fields=True, gc=False)
        self.decoder = msgspec.json.Decoder(list[row])
        names = [field for field, _, _ in self.plain]
        get = attrgetter(*names) if names else None
        self.values = get if len(names) > 1 else lambda row: (get(row),)  # a tuple per row
        self.struct = pa.struct([(key, arrow) for _, key, arrow in self.plain])

    def table(self, array: bytes) -> pa.Table:
        """The columns of a batch of rows; :class:`_Unfit` (or a decoding error) if it is not
        rows of these fields and types."""
        rows = self.decoder.decode(array)
        columns, names = [], []
        if self.plain:
            values = map(self.values, rows)  # each row's tuple goes as soon as it is read
            columns = pa.array(values, type=self.struct, size=len(rows),
                               memory_pool=_POOL).flatten(_POOL)
            names = [key for _, key, _ in self.plain]
        used: set[str] = set()
        for field, key, arrow, name in self.spelled:
            values = list(map(attrgetter(field), rows))
            missing = values.count(msgspec.UNSET)
            if missing == len(values):
                continue
            if name in used:
                raise _Unfit(f"two spellings of {name}")
            used.add(name)
            names.append(key)
            if missing:
                values = [None if v is msgspec.UNSET else v for v in values]
            columns.append(pa.array(values, arrow, memory_pool=_POOL))
        if not columns:  # rows of no fields: only pandas keeps their number
            raise _Unfit("no columns")
        return pa.Table.from_arrays(columns, names=names)


def _dates(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """NBIA v4's dates (``"05-27-2015"``) as timestamps, parsed in Arrow; the text itself where
    any value has another form, is no real day, or falls outside what ``datetime64[ns]`` holds
    (those are parsed later, form by form, by :func:`~intake_tcia.schema.parse_dates`, to the
    same values)."""
    import pyarrow.compute as pc

    pool = {"memory_pool": _POOL}
    try:
        form = pc.match_substring_regex(column, r"^[0-9]{2}-[0-9]{2}-[0-9]{4}$", **pool)
        if (pc.sum(form).as_py() or 0) != len(column) - column.null_count:
            return column
        parsed = pc.strptime(column, format="%m-%d-%Y", unit="ns", error_is_null=True, **pool)
        if parsed.null_count != column.null_count:
            return column
        # strptime rolls an impossible day over ("02-30-2015" is March 2nd): each day must stay
        day = pc.cast(pc.utf8_slice_codeunits(column, 3, 5, **pool), pa.int64(), **pool)
        if pc.any(pc.not_equal(day, pc.day(parsed, **pool), **pool)).as_py():
            return column
        years = pc.min_max(pc.year(parsed, **pool)).as_py()
    except pa.ArrowException:
        return column
    if years["min"] is not None and not 1678 <= years["min"] <= years["max"] <= 2261:
        return column
    return parsed


@functools.lru_cache(maxsize=64)
def _layout(columns: tuple[tuple[str, str], ...], renames: tuple[tuple[str, str], ...]) -> _Layout:
    return _Layout(columns, renames)


class JSONFrame(ArrayBatches):
    """Feed it the bytes of a JSON answer; :meth:`close` gives the typed DataFrame of ``schema``.

    The frame is ``frame_from_records(rows, schema)`` of the rows :class:`JSONRows` would give:
    an empty body gives the empty frame; a body that is not valid JSON raises ``ValueError``.
    """

    def __init__(self, schema: EndpointSchema, batch_bytes: int = _BATCH_BYTES) -> None:
        super().__init__(batch_bytes)
        self.schema = schema
        self._layout = _layout(tuple(schema.columns.items()), tuple(schema.renames.items()))
        self._parts: list[pa.Table | pd.DataFrame] = []
        #: Bytes the parsed rows hold so far (sparse rows can hold more than they were sent).
        self.held = 0

    def _take(self, array: bytes) -> None:
        try:
            table = self._layout.table(array)
        except (msgspec.DecodeError, pa.ArrowException, OverflowError, _Unfit):
            self._take_value(loads(array))
        else:
            self._parts.append(table)
            self.held += table.nbytes

    def _take_value(self, value: Any) -> None:
        frame = raw_frame(value if isinstance(value, list) else [value], self.schema)
        self._parts.append(frame)
        self.held += int(frame.memory_usage(index=False, deep=True).sum())

    def _result(self) -> pd.DataFrame:
        parts, self._parts = self._parts, []
        groups = [list(group) for _, group in itertools.groupby(parts, _same_columns)]
        del parts
        frames = []
        while groups:
            group = groups.pop(0)
            if isinstance(group[0], pa.Table):
                table = pa.concat_tables(group, memory_pool=_POOL)
                del group  # the table alone holds the batches: each column goes once converted
                for key in self._layout.dates:  # one parse a column, not one a batch
                    if key in table.column_names:
                        at = table.column_names.index(key)
                        table = table.set_column(at, key, _dates(table.column(at)))
                frames.append(table.to_pandas(types_mapper=_PANDAS.get, memory_pool=_POOL,
                                              self_destruct=True, split_blocks=True))
                del table
            else:
                frames.extend(group)
        if len(frames) != 1:
            frames = [
                pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
            ]
        return typed_frame(frames[0], self.schema)


def _same_columns(part: pa.Table | pd.DataFrame) -> Any:
    """Batches that are tables of the same columns are joined before going to pandas."""
    return part.schema if isinstance(part, pa.Table) else id(part)

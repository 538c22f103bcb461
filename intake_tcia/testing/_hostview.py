"""One host's view of the sample archive's series table, and the error answers endpoints raise.

Both the query endpoints (:mod:`._endpoints`) and the search endpoints (:mod:`._search`) work on a
:class:`HostView` and fail with an :class:`ApiError`.
"""

from __future__ import annotations

from functools import cached_property

import pandas as pd

from .builder import SampleArchive, parse_mdy

__all__ = ["CASE_INSENSITIVE", "ApiError", "HostView", "not_granted"]

#: Filters compared case-insensitively (``UPPER(x) = UPPER(:p)``); UIDs are exact.
CASE_INSENSITIVE = frozenset(
    {"Collection", "PatientID", "Modality", "BodyPartExamined", "Manufacturer",
     "ManufacturerModelName"}
)


class ApiError(Exception):
    """An error answer: status and the server's plain text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def not_granted(series_uid: str) -> ApiError:
    """The 400 an unknown, private or wrong-host SeriesInstanceUID gets."""
    return ApiError(
        400,
        "The user has not been granted the access to image with given SeriesInstanceUID,"
        f"{series_uid}. Please contact System Admin to resolve this issue.",
    )


class HostView:
    """One host's series rows, with cached upper-case columns and release dates."""

    def __init__(self, archive: SampleArchive, host: str) -> None:
        self.archive = archive
        table = archive.table
        self.table = table[table["host"] == host].reset_index(drop=True)
        self._upper: dict[str, pd.Series] = {}

    def upper(self, column: str) -> pd.Series:
        """The column in upper case (cached)."""
        if column not in self._upper:
            self._upper[column] = self.table[column].str.upper()
        return self._upper[column]

    @cached_property
    def released(self) -> pd.Series:
        """DateReleased as datetimes."""
        return pd.to_datetime(self.table["DateReleased"], format="%m-%d-%Y", errors="coerce")

    @cached_property
    def uids(self) -> frozenset[str]:
        """Every SeriesInstanceUID on this host."""
        return frozenset(self.table["SeriesInstanceUID"])

    def select(
        self, params: dict[str, str], *, names: dict[str, str] | None = None
    ) -> pd.DataFrame:
        """Rows matching the filter parameters present (param name -> column name)."""
        mask = pd.Series(True, index=self.table.index)
        for param, value in params.items():
            column = (names or {}).get(param, param)
            if column not in self.table.columns or value == "":
                continue
            if column in CASE_INSENSITIVE:
                mask &= self.upper(column) == value.upper()
            else:
                mask &= self.table[column] == value
        return self.table[mask.to_numpy(dtype=bool)]

    def since(self, rows: pd.DataFrame, from_date: str, *, strict: bool) -> pd.DataFrame:
        """Rows released after (``strict``) or on/after a ``MM-DD-YYYY`` date."""
        try:
            when = pd.Timestamp(parse_mdy(from_date))
        except ValueError:
            raise ApiError(
                400, f"Invalid date: {from_date}. The expected format is MM-DD-YYYY."
            ) from None
        released = self.released.loc[rows.index]
        return rows[(released > when) if strict else (released >= when)]

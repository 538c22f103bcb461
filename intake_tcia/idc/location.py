"""Where IDC keeps a series, from its row of the index, every value checked.

The index is a file like any other and may be hostile or broken: a value of the wrong type, a
size that is NaN, infinite or negative, a count that is null or 0, a folder name that would lead
the listing elsewhere. :func:`locate` reads the rows asked for and checks each value; a row with a
bad value gets a location whose ``problem`` names the index file and the column, raised when the
series is fetched (so one bad row fails one series, and ``download(on_error="return")`` reports
it in its row). A file that cannot be read at all is a :class:`TCIABackendError` naming it.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._lazy import pandas as pd
from ..errors import TCIABackendError, TCIAError, TCIAIntegrityError, TCIANotFoundError
from ..retrieval.layouts import plain

if TYPE_CHECKING:
    from .index import IDCIndex

__all__ = ["IDCLocation", "NotInIndexError", "index_errors", "locate", "location_of", "locations"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")  # a bucket's or a folder's name


@dataclass(frozen=True)
class IDCLocation:
    """Where IDC keeps a series, and what its index row vouches for.

    Attributes
    ----------
    series_uid : str
        The SeriesInstanceUID.
    bucket : str
        ``aws_bucket`` (``idc-open-data``).
    prefix : str
        ``<crdc_series_uuid>/``, the folder of its objects.
    instance_count : int or None
        The index's ``instanceCount`` (None where it gives none, or a bad one).
    collection : str or None
        TCIA's collection name.
    release : int or None
        For an older IDC release's copy of the series (``idc_version``), that release; None
        for the current copy.
    size_mb : float or None
        The index's ``series_size_MB``.
    study_uid : str or None
        The index's ``StudyInstanceUID``: every instance must be of it.
    problem : str or None
        Why the row cannot vouch for the series (a bad value; the file and column named).
    """

    series_uid: str
    bucket: str
    prefix: str
    instance_count: int | None = None
    collection: str | None = None
    release: int | None = None
    size_mb: float | None = None
    study_uid: str | None = None
    problem: str | None = None

    def vouched(self) -> tuple[int | None, float]:
        """(instanceCount, series_size_MB) when the row vouches for both, else
        :class:`TCIAIntegrityError` naming the series and the column. An older release's copy
        has no ``instanceCount`` in the index (None: only its size is vouched for)."""
        problem = self.problem
        if problem is None and not self.instance_count and not (
                self.release is not None and self.instance_count is None):
            problem = (f"the IDC index gives instanceCount {self.instance_count}: it cannot "
                       "vouch for the series being complete")
        if problem is not None:
            raise TCIAIntegrityError(f"series {self.series_uid}: {problem}", retryable=False)
        return self.instance_count, self.size_mb  # type: ignore[return-value]


class NotInIndexError(TCIANotFoundError):
    """A series the IDC index does not list (no request was made: no HTTP status to show)."""

    def __str__(self) -> str:
        return f"{self.text} (index {self.url})"


@contextmanager
def index_errors(index: IDCIndex) -> Iterator[None]:
    """Errors of reading a broken or foreign index file as :class:`TCIABackendError` naming it
    (a missing file stays FileNotFoundError: no index)."""
    try:
        yield
    except (TCIAError, FileNotFoundError):
        raise
    except (index.pa.ArrowException, OSError) as exc:
        raise TCIABackendError(f"the IDC index file {index.path} cannot be read: "
                               f"{type(exc).__name__}: {exc}") from exc


def locate(index: IDCIndex, series_uids: Iterable[str]) -> dict[str, IDCLocation]:
    """The IDC locations of the series the index lists (one index scan for all of them).

    Returns
    -------
    dict of str to IDCLocation
        Unknown series are left out; rows with bad values get a ``problem``.

    Raises
    ------
    TCIABackendError
        The index file cannot be read (naming it).
    """
    with index_errors(index):
        return locations(index.series_locations(series_uids), index.path)


def locations(frame: pd.DataFrame, path: object) -> dict[str, IDCLocation]:
    """The IDC locations of the rows of a :meth:`IDCIndex.series_locations` frame (with, for an
    older release, ``idc_version`` and ``prior``); ``path`` is the index file, for messages."""
    return {row["SeriesInstanceUID"]: location_of(row, str(path))
            for row in frame.to_dict("records")}


def location_of(row: dict[str, Any], path: str) -> IDCLocation:
    """The location a row of the index gives, each value checked (:class:`TCIABackendError`
    naming the file ``path``, the column and the value, where one is unusable)."""
    problems = []

    def bad(column: str, why: str) -> None:
        problems.append(f"{path}: column {column} holds {row.get(column)!r}, {why}")

    count = row.get("instanceCount")
    if plain(count) is None:
        count = None
    elif isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
        bad("instanceCount", "not a whole number >= 0")
        count = None
    size = row.get("series_size_MB")
    if plain(size) is None:
        bad("series_size_MB", "no size to bound the series by")
        size = None
    elif (isinstance(size, bool) or not isinstance(size, numbers.Real)
          or not math.isfinite(size) or size < 0):
        bad("series_size_MB", "not a finite number >= 0")
        size = None
    bucket, folder = row.get("aws_bucket"), row.get("crdc_series_uuid")
    for column, value in (("aws_bucket", bucket), ("crdc_series_uuid", folder)):
        if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
            bad(column, "not a plain name")
    study, release = row.get("StudyInstanceUID"), row.get("idc_version")
    return IDCLocation(
        row["SeriesInstanceUID"], str(bucket), f"{folder}/",
        instance_count=None if count is None else int(count),
        collection=row.get("Collection"),
        release=int(release) if row.get("prior") and plain(release) is not None else None,
        size_mb=None if size is None else float(size),
        study_uid=study if isinstance(study, str) and study else None,
        problem="; ".join(problems) or None,
    )

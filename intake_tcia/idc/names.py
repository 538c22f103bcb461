"""IDC collection ids (``lidc_idri``) as TCIA's collection names (``LIDC-IDRI``).

IDC names each collection by a ``collection_id``; ``collections_index`` maps it to TCIA's
``collection_name``. The client takes either wherever a collection is named and asks in TCIA's
name, so the frames keep TCIA's names whichever was given. Ids are lower case (letters, digits,
underscores); a value of any other shape, or one the table does not list, is left as it is (and
an unknown name is then reported as ever, with the closest names). Without an index (no
idc-index-data and no ``idc_index`` folder) nothing is mapped.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependencyError
from .supplementary import index_folder

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["collection_ids", "collection_name", "collection_names"]

_ID = re.compile(r"[a-z0-9][a-z0-9_]*")
_lock = threading.Lock()
_read: dict[tuple[str, int, int], dict[str, str]] = {}


def collection_ids(path: Path) -> dict[str, str]:
    """collection_id -> collection_name of a collections_index file, read once per version of
    the file (its size and modification time)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key not in _read:
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=["collection_id", "collection_name"])
            _read[key] = {
                i: n
                for i, n in zip(
                    table["collection_id"].to_pylist(),
                    table["collection_name"].to_pylist(),
                    strict=True,
                )
                if i and n
            }
        return _read[key]


def collection_name(settings: Settings, value: str) -> str:
    """str: TCIA's name of the collection ``value`` names (an IDC id or TCIA's name)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        return value
    try:
        path = index_folder(settings) / "collections_index.parquet"
    except MissingDependencyError:
        return value
    if not path.is_file():
        return value
    return collection_ids(path).get(value, value)


def collection_names(settings: Settings, value: Any) -> Any:
    """``value`` (one collection or several) with each IDC id as TCIA's name."""
    if value is None or isinstance(value, str):
        return collection_name(settings, value) if value is not None else None
    if isinstance(value, Iterable):
        return [collection_name(settings, v) for v in value]
    return value

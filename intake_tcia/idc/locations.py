"""Where IDC keeps each series: a compact, sorted table in the cache, memory-mapped to look up.

The series index (``idc_index.parquet``, a million rows in one row group) is read whole to find
even one series; doing that on every download cost a third of a second of CPU and over a
hundred MB of memory. Here the columns a download needs are read once per index version and
kept under the cache (``idc-index/<fingerprint>/``, next to the index's other cached parts):
``location-keys.npy`` holds each SeriesInstanceUID (fixed width) with its row number, sorted by
UID; ``location-rows.npy`` each row's ``crdc_series_uuid``, ``instanceCount`` and the codes of
its collection id and bucket, named in ``locations.json``. A lookup memory-maps the table and
binary-searches it (:func:`numpy.searchsorted`), touching a few pages per UID: what ``auto``
costs before a download is then what ``nbia`` costs.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["LocationTable", "location_table", "table_for", "table_index_path"]

#: The sorted UIDs with their row numbers; the rows; the names of collections and buckets.
KEYS_FILE, ROWS_FILE, NAMES_FILE = "location-keys.npy", "location-rows.npy", "locations.json"
_FORMAT = 2
_COLUMNS = ["SeriesInstanceUID", "StudyInstanceUID", "collection_id", "aws_bucket",
            "crdc_series_uuid", "instanceCount", "series_size_MB"]
_UID_BYTES = 64  # PS3.5 9.1: a UID is at most 64 characters
_UUID_BYTES = 36
_BATCH = 1 << 16
_OPEN: dict[Path, LocationTable] = {}
_OPEN_LOCK = threading.Lock()


class LocationTable:
    """The sorted records of one index version, memory-mapped.

    Parameters
    ----------
    folder : Path
        The folder holding :data:`KEYS_FILE`, :data:`ROWS_FILE` and :data:`NAMES_FILE`.
    """

    def __init__(self, folder: Path) -> None:
        import numpy as np

        self._np = np
        names = json.loads((folder / NAMES_FILE).read_text(encoding="utf-8"))
        if names.get("format") != _FORMAT:
            raise ValueError(f"{folder / NAMES_FILE}: not format {_FORMAT}")
        self.collections: list[str] = names["collections"]
        self.buckets: list[str] = names["buckets"]
        self.keys = np.load(folder / KEYS_FILE, mmap_mode="r")  # sorted: uid, row
        self.rows = np.load(folder / ROWS_FILE, mmap_mode="r")  # in the index's order
        if len(self.keys) > len(self.rows):
            raise ValueError(f"{folder}: keys and rows disagree")

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, series_uids: Iterable[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The index rows of the series asked for, as :meth:`IDCIndex.series_locations` gives
        them (``SeriesInstanceUID``, ``StudyInstanceUID``, ``Collection``, ``aws_bucket``,
        ``crdc_series_uuid``, ``instanceCount``, ``series_size_MB``; unknown series left out),
        and the series whose rows hold a value the table cannot keep exactly (to be read from
        the index itself, where its checks name the value)."""
        np = self._np
        uids = [u for u in dict.fromkeys(series_uids) if 0 < len(u.encode()) <= _UID_BYTES]
        if not uids or not len(self.keys):
            return {}, []
        wanted = np.array([u.encode() for u in uids], dtype=f"S{_UID_BYTES}")
        uid_keys = self.keys["uid"]
        at = np.minimum(np.searchsorted(uid_keys, wanted), len(uid_keys) - 1)
        found, irregular = {}, []
        for uid, key, i in zip(uids, wanted, at.tolist(), strict=True):
            if uid_keys[i] != key:
                continue
            row = self.rows[min(int(self.keys["row"][i]), len(self.rows) - 1)]
            if row["irregular"]:
                irregular.append(uid)
                continue
            count = int(row["count"])
            study = row["study"].decode()
            found[uid] = {
                "SeriesInstanceUID": uid, "StudyInstanceUID": study or None,
                "Collection": self.collections[int(row["collection"])],
                "aws_bucket": self.buckets[int(row["bucket"])],
                "crdc_series_uuid": row["uuid"].decode(),
                "instanceCount": None if count < 0 else count,
                "series_size_MB": float(row["size"]),
            }
        return found, irregular


def table_for(folder: Path | None, cache_dir: Path | None) -> LocationTable | None:
    """The table of the index in ``folder`` (None: the installed idc-index-data) as its files
    are now, kept under ``cache_dir``; None where there is no cache to keep it in. Opening it
    reads no parquet: only building it does (once per index version)."""
    if cache_dir is None:
        return None
    from .index import default_folder, index_fingerprint

    folder = Path(folder).expanduser() if folder is not None else default_folder()
    root = Path(cache_dir).expanduser() / "idc-index" / index_fingerprint(folder)
    return location_table(folder, root)


def table_index_path(folder: Path | None) -> Path:
    """Path: the index file of the folder ``idc_index`` names (None: idc-index-data's)."""
    from .index import INDEX_FILE, default_folder

    return (Path(folder).expanduser() if folder is not None else default_folder()) / INDEX_FILE


def location_table(index_folder: Path, folder: Path) -> LocationTable:
    """The table of the index in ``index_folder``, kept in ``folder`` (one folder per index
    version): opened if it is there, else built first (once; threads and processes that find
    none build their own, and the last rename wins with the same content)."""
    with _OPEN_LOCK:
        table = _OPEN.get(folder)
    if table is not None:
        return table
    try:
        table = LocationTable(folder)
    except (OSError, ValueError, KeyError, TypeError):
        _build(index_folder, folder)
        table = LocationTable(folder)
    with _OPEN_LOCK:
        _OPEN[folder] = table
    return table


def _build(index_folder: Path, folder: Path) -> None:
    """Read the index's location columns batch by batch into fixed-width arrays: the rows in
    the index's order, and the UIDs with their row numbers sorted by UID (the first row of a
    UID listed twice wins, as in the index scan); write both and the names (TCIA's name of
    each collection id, from collections_index) atomically. A row holding a value the arrays
    cannot keep exactly (text too long or not ASCII, a null, a count below 0, a size that is
    not a finite number >= 0, a column of another type) is marked irregular: its series is read
    from the index itself."""
    import numpy as np
    import pyarrow.parquet as pq

    from .index import INDEX_FILE, IDCIndex

    file = pq.ParquetFile(str(index_folder / INDEX_FILE), pre_buffer=False, buffer_size=1 << 20)
    total = file.metadata.num_rows
    keys = np.empty(total, dtype=[("uid", f"S{_UID_BYTES}"), ("row", "<i4")])
    rows = np.empty(total, dtype=[("uuid", f"S{_UUID_BYTES}"), ("study", f"S{_UID_BYTES}"),
                                  ("count", "<i8"), ("size", "<f8"), ("collection", "<i2"),
                                  ("bucket", "<i2"), ("irregular", "?")])
    collections: dict[str, int] = {}
    buckets: dict[str, int] = {}
    at = 0
    for batch in file.iter_batches(batch_size=_BATCH, columns=_COLUMNS, use_threads=False):
        n = batch.num_rows
        keys["uid"][at:at + n], _ = _fixed(batch["SeriesInstanceUID"], _UID_BYTES, np)
        keys["row"][at:at + n] = np.arange(at, at + n, dtype=np.int32)
        part = rows[at:at + n]
        part["uuid"], bad_uuid = _fixed(batch["crdc_series_uuid"], _UUID_BYTES, np)
        part["study"], bad_study = _fixed(batch["StudyInstanceUID"], _UID_BYTES, np)
        part["count"], bad_count = _counts(batch["instanceCount"], np)
        part["size"], bad_size = _sizes(batch["series_size_MB"], np)
        part["collection"] = _codes(batch["collection_id"], collections, np)
        part["bucket"] = _codes(batch["aws_bucket"], buckets, np)
        no_bucket = batch["aws_bucket"].is_null().to_numpy(zero_copy_only=False)
        part["irregular"] = bad_uuid | bad_study | bad_count | bad_size | no_bucket
        at += n
        del batch, part
    keys, rows = keys[:at], rows[:at]
    keys.sort(kind="stable", order="uid")  # in place; equal UIDs keep the index's order
    if len(keys):
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys["uid"][1:] != keys["uid"][:-1]
        if not first.all():
            keys = keys[first]
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(folder / ROWS_FILE, lambda f: np.save(f, rows, allow_pickle=False))
    _write_atomically(folder / KEYS_FILE, lambda f: np.save(f, keys, allow_pickle=False))
    index = IDCIndex(index_folder)
    names = {"format": _FORMAT, "collections": [index.name_of(c) for c in collections],
             "buckets": list(buckets)}
    _write_atomically(folder / NAMES_FILE, lambda f: f.write(json.dumps(names).encode()))


def _fixed(values: Any, width: int, np: Any) -> tuple[Any, Any]:
    """ASCII text values as fixed-width bytes, without a Python object per value, and which
    could not be kept (nulls, text longer than ``width`` or not ASCII, another type: b"")."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return np.zeros(len(values), dtype=f"S{width}"), np.ones(len(values), dtype=bool)
    text = pc.cast(values, pa.string())
    fits = pc.and_(pc.less_equal(pc.binary_length(text), width), pc.string_is_ascii(text))
    fits = fits.fill_null(False)
    padded = pc.utf8_rpad(pc.if_else(fits, text, ""), width=width, padding="\0").fill_null("")
    bad = pc.invert(fits).to_numpy(zero_copy_only=False)
    if not len(padded):
        return np.empty(0, dtype=f"S{width}"), bad
    padded = padded.combine_chunks() if isinstance(padded, pa.ChunkedArray) else padded
    _, offsets, data = padded.buffers()
    start = int(np.frombuffer(offsets, dtype=np.int32, count=1, offset=4 * padded.offset)[0])
    return np.frombuffer(data, dtype=f"S{width}", count=len(padded), offset=start), bad


def _counts(values: Any, np: Any) -> tuple[Any, Any]:
    """instanceCount as int64 (-1 where it is null), and which cannot be kept (below 0, beyond
    int64, or a column that is no integer)."""
    import pyarrow as pa

    try:
        if not pa.types.is_integer(values.type):
            raise pa.ArrowInvalid("not an integer column")
        whole = values.cast(pa.int64())
    except pa.ArrowInvalid:
        return np.full(len(values), -1, dtype=np.int64), np.ones(len(values), dtype=bool)
    negative = whole.fill_null(0).to_numpy(zero_copy_only=False) < 0
    return whole.fill_null(-1).to_numpy(zero_copy_only=False), negative


def _sizes(values: Any, np: Any) -> tuple[Any, Any]:
    """series_size_MB as float64, and which cannot vouch for a size (null, not a finite number
    >= 0, a column that is no number)."""
    import pyarrow as pa

    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        return np.full(len(values), np.nan), np.ones(len(values), dtype=bool)
    numbers = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        return numbers, ~(np.isfinite(numbers) & (numbers >= 0))


def _codes(values: Any, names: dict[str, int], np: Any) -> Any:
    """Each value's position in ``names`` (new ones appended); nulls as ""."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(pc.cast(values, pa.string()).fill_null(""))
    mapping = np.array([names.setdefault(v, len(names)) for v in encoded.dictionary.to_pylist()],
                       dtype=np.int16)
    return mapping[encoded.indices.to_numpy(zero_copy_only=False)]


def _write_atomically(target: Path, write: Any) -> None:
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)

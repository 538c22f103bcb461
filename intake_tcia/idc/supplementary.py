"""IDC's index tables, where each one is, and the supplementary ones fetched as idc-index does.

IDC's tables go by idc-index's names: ``index`` (the file ``idc_index.parquet``),
``prior_versions_index``, ``collections_index``, ``analysis_results_index`` and
``version_metadata_index`` (shipped in the ``idc-index-data`` package), and the supplementary ones
(:data:`SUPPLEMENTARY`: ``sm_index``, ``seg_index``, ``clinical_index``, ...), which idc-index
fetches from ``{idc_index_url}{name}.parquet``, idc-index-data's GitHub release folder of the
installed version. A table is looked for in the index folder (``settings.idc_index``, else the
installed package's folder), then among those fetched into the cache
(``<cache_dir>/idc-tables/<digest of idc_index_url>/``).

:func:`fetch_index` fetches one through the package's one transport (redirects followed, at most
``settings.max_answer_bytes``), into a hidden file of the cache, and keeps it (renamed into place)
only when it is a readable parquet file whose schema equals the ``{name}_schema.json`` shipped in
idc-index-data: the same column names, each of the type the schema names. idc-index itself
verifies nothing.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._lazy import pandas as pd
from ..errors import (
    MissingDependencyError,
    TCIABackendError,
    TCIAConnectionError,
    TCIAResponseError,
)
from ..retrieval.cache import atomic_path
from .index import default_folder

if TYPE_CHECKING:
    from ..config import Settings
    from ..retrieval.transport import Transport

__all__ = [
    "CORE",
    "SUPPLEMENTARY",
    "TABLES",
    "TableFile",
    "table_files",
    "index_folder",
    "fetched_folder",
    "schema_columns",
    "check_schema",
    "check_name",
    "indices",
    "fetch_index",
]

#: The tables idc-index-data ships as parquet files.
CORE = (
    "index",
    "prior_versions_index",
    "collections_index",
    "analysis_results_index",
    "version_metadata_index",
)
#: The tables idc-index fetches from idc-index-data's release folder.
SUPPLEMENTARY = (
    "sm_index",
    "sm_instance_index",
    "seg_index",
    "rtstruct_index",
    "ann_index",
    "ann_group_index",
    "clinical_index",
    "ct_index",
    "mr_index",
    "pt_index",
    "contrast_index",
    "volume_geometry_index",
)
TABLES = CORE + SUPPLEMENTARY
_FETCHED = "idc-tables"
_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


def file_stem(table: str) -> str:
    """str: the file name (without ``.parquet``) of a table (``index`` -> ``idc_index``)."""
    return "idc_index" if table == "index" else table


def _table_of(path: Path) -> str:
    return "index" if path.stem == "idc_index" else path.stem


@dataclass(frozen=True)
class TableFile:
    """One table's parquet file and where it came from (``"package"``, ``"folder"``,
    ``"fetched"``)."""

    table: str
    path: Path
    source: str


def index_folder(settings: Settings) -> Path:
    """Path: the index folder (``settings.idc_index``, else the installed idc-index-data's)."""
    return settings.idc_index if settings.idc_index is not None else default_folder()


def fetched_folder(settings: Settings) -> Path:
    """Path: where tables fetched from ``settings.idc_index_url`` are kept in the cache."""
    key = hashlib.sha256(str(settings.idc_index_url).encode()).hexdigest()[:16]
    return settings.cache_dir / _FETCHED / key


def table_files(settings: Settings) -> dict[str, TableFile]:
    """The tables present now, by name: the index folder's parquet files, then those fetched
    into the cache (a name in both: the folder's)."""
    found: dict[str, TableFile] = {}
    source = "folder" if settings.idc_index is not None else "package"
    for folder, kind in ((index_folder(settings), source), (fetched_folder(settings), "fetched")):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.parquet")):
            if not path.name.startswith("."):
                found.setdefault(_table_of(path), TableFile(_table_of(path), path, kind))
    return found


@lru_cache(maxsize=64)
def schema_columns(table: str) -> tuple[tuple[str, str, str], ...] | None:
    """The ``(name, type, mode)`` of each column in the ``{name}_schema.json`` idc-index-data
    ships (None when it ships none, or is not installed)."""
    try:
        path = default_folder() / f"{file_stem(table)}_schema.json"
    except MissingDependencyError:
        return None
    if not path.is_file():
        return None
    columns = json.loads(path.read_text(encoding="utf-8"))["columns"]
    return tuple((c["name"], c.get("type", ""), c.get("mode", "NULLABLE")) for c in columns)


def _type_matches(kind: Any, bq_type: str, mode: str) -> bool:
    """Whether an Arrow type is what a BigQuery type and mode (as the schema files say) give."""
    import pyarrow as pa

    t = pa.types
    if mode == "REPEATED":
        if not (t.is_list(kind) or t.is_large_list(kind)):
            return False
        kind = kind.value_type
    checks = {
        "STRING": lambda k: t.is_string(k) or t.is_large_string(k) or t.is_string_view(k),
        "INTEGER": t.is_integer,
        "INT64": t.is_integer,
        "FLOAT": t.is_floating,
        "FLOAT64": t.is_floating,
        "NUMERIC": lambda k: t.is_decimal(k) or t.is_floating(k),
        "BOOLEAN": t.is_boolean,
        "BOOL": t.is_boolean,
        "RECORD": t.is_struct,
        "STRUCT": t.is_struct,
        "TIMESTAMP": t.is_timestamp,
        "DATE": t.is_date,
        "DATETIME": t.is_timestamp,
        "BYTES": lambda k: t.is_binary(k) or t.is_large_binary(k),
    }
    check = checks.get(bq_type.upper())
    return bool(check(kind)) if check else True


def check_schema(table: str, path: Path) -> None:
    """Raise :class:`TCIAResponseError` unless ``path`` is a readable parquet file whose schema
    equals ``table``'s schema file: the same column names, each of the type it names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = schema_columns(table)
    if expected is None:
        raise TCIABackendError(
            f"idc-index-data ships no {file_stem(table)}_schema.json to check {table} against"
        )
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise TCIAResponseError(f"{table}: not a readable parquet file ({exc})") from exc
    have = {f.name: f.type for f in schema}
    names = [name for name, _, _ in expected]
    missing = [n for n in names if n not in have]
    extra = [n for n in have if n not in set(names)]
    wrong = [
        f"{n} is {have[n]}, not {bq} {mode}"
        for n, bq, mode in expected
        if n in have and not _type_matches(have[n], bq, mode)
    ]
    if missing or extra or wrong:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unexpected {', '.join(extra)}"] if extra else []
        parts += wrong
        raise TCIAResponseError(
            f"{table}: the schema differs from {file_stem(table)}_schema.json: "
            + "; ".join(parts)
        )


def check_name(table: str) -> str:
    """``table`` if it is one of IDC's tables, else :class:`TCIABackendError` with the closest
    names (the names of :data:`TABLES`; ``idc_index`` is taken for ``index``)."""
    if not isinstance(table, str):
        raise TypeError(f"an index name is a str, not {type(table).__name__}")
    name = table.strip()
    name = "index" if name == "idc_index" else name
    if name in TABLES:
        return name
    close = difflib.get_close_matches(name.lower(), TABLES, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise TCIABackendError(
        f"no IDC index {table!r}{hint} (the indices: {', '.join(TABLES)})"
    )


def indices(settings: Settings) -> pd.DataFrame:
    """One row per IDC table: ``table``, ``rows`` (null when absent), ``columns`` (list of
    names; from the schema file when absent), ``present``, ``source`` (``"package"``,
    ``"folder"``, ``"fetched"``, null when absent). Reads only the files' footers."""
    import pyarrow.parquet as pq

    files = table_files(settings)
    rows = []
    for table in list(TABLES) + sorted(set(files) - set(TABLES)):
        file = files.get(table)
        count: int | None = None
        if file is not None:
            try:
                meta = pq.read_metadata(file.path)
                count, columns = meta.num_rows, list(meta.schema.to_arrow_schema().names)
            except Exception as exc:  # noqa: BLE001 - any unreadable footer
                raise TCIAResponseError(
                    f"{file.path} is not a readable parquet file: {exc}") from exc
        else:
            columns = [name for name, _, _ in schema_columns(table) or ()]
        rows.append({
            "table": table,
            "rows": count,
            "columns": columns,
            "present": file is not None,
            "source": file.source if file else None,
        })
    return pd.DataFrame({
        "table": pd.Series([r["table"] for r in rows], dtype=object),
        "rows": pd.array([r["rows"] for r in rows], dtype="Int64"),
        "columns": pd.Series([r["columns"] for r in rows], dtype=object),
        "present": pd.array([r["present"] for r in rows], dtype=bool),
        "source": pd.Series([r["source"] for r in rows], dtype=object),
    })


def _lock_for(path: Path) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(str(path), threading.Lock())


def fetch_index(settings: Settings, transport: Transport, name: str) -> TableFile:
    """Fetch a supplementary index once into the cache, verified (see the module doc).

    Parameters
    ----------
    settings : Settings
        ``idc_index_url``, ``cache_dir``, ``max_answer_bytes``, ``query_timeout``.
    transport : Transport
        The package's transport.
    name : str
        One of :data:`TABLES`; a table already present fetches nothing.

    Returns
    -------
    TableFile
        The table's file, wherever it is.

    Raises
    ------
    TCIABackendError
        An unknown name (with the closest), or no ``idc_index_url`` (idc-index-data missing).
    TCIAResponseError
        The file fetched is no readable parquet file of the table's schema (nothing kept), or
        is larger than ``max_answer_bytes``.
    TCIAHTTPError, TCIAConnectionError
        The fetch failed.
    """
    table = check_name(name)
    present = table_files(settings).get(table)
    if present is not None:
        return present
    if table in CORE:
        raise TCIABackendError(
            f"{table} ships in idc-index-data, and the index folder {str(index_folder(settings))!r}"
            f" has no {file_stem(table)}.parquet: set idc_index to a folder that has it"
        )
    if settings.idc_index_url is None:
        raise TCIABackendError(
            "no idc_index_url (INTAKE_TCIA_IDC_INDEX_URL) to fetch from, and no idc-index-data "
            "installed to name its release: pip install 'intake-tcia[idc]'"
        )
    if schema_columns(table) is None:
        raise TCIABackendError(
            f"idc-index-data ships no {table}_schema.json to verify {table} against: "
            "pip install 'intake-tcia[idc]'"
        )
    target = fetched_folder(settings) / f"{table}.parquet"
    with _lock_for(target):
        if target.is_file():
            return TableFile(table, target, "fetched")
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, durable=True) as temporary:
            _download(settings, transport, settings.idc_index_url + f"{table}.parquet", temporary)
            check_schema(table, temporary)
    return TableFile(table, target, "fetched")


def _download(settings: Settings, transport: Transport, url: str, path: Path) -> None:
    """The body at ``url`` into ``path`` (anew on each retry), at most ``max_answer_bytes``."""
    budget = transport.budget()
    limit = settings.max_answer_bytes

    def once() -> None:
        with transport.stream(url, budget=budget) as response, open(path, "wb") as sink:
            deadline = time.monotonic() + settings.query_timeout
            size = 0
            for chunk in transport.iter_body(response, deadline=deadline):
                size += len(chunk)
                if size > limit:
                    raise TCIAResponseError(
                        f"{response.url} sent more than {limit} bytes (max_answer_bytes); "
                        "giving up"
                    )
                sink.write(chunk)
            expected = response.headers.get("Content-Length", "")
            plain = not response.headers.get("Content-Encoding")
            if plain and expected.isdigit() and int(expected) != size:
                raise TCIAConnectionError(f"{response.url} ended after {size} of {expected} bytes")

    budget.run(once)

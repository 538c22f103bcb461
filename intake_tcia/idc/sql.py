"""SQL over IDC's index tables, as idc-index's ``sql_query`` runs it, with DuckDB.

Each parquet file of the index folder, and each supplementary index fetched into the cache
(:mod:`intake_tcia.idc.supplementary`), is a DuckDB view under idc-index's table name (``index``
for ``idc_index.parquet``, ``collections_index``, ``sm_index``, ...): a view over the file, never a
copy of it in memory. So the SQL of IDC's tutorials runs unchanged::

    SELECT collection_id, COUNT(DISTINCT PatientID) AS patients FROM index GROUP BY ALL

One :class:`SQLEngine` (one DuckDB connection) per client, made on the first query and reused;
each query runs on a cursor of its own, so threads may query at once. Views are made for the
tables present at each query (a table fetched since is there the next time).

Nothing but reading: a query must be one ``SELECT`` (or ``WITH ... SELECT``, ``DESCRIBE``,
``SHOW``, ``EXPLAIN``) statement, told apart by DuckDB's own parser before anything runs; DuckDB
itself may read only the index folder and the cache's table folder, and its configuration is
locked. Errors are :class:`~intake_tcia.errors.TCIASQLError`, carrying DuckDB's message and the
table list; a table IDC has but the folder lacks is named with the call that fetches it; a
parquet file that cannot be read is named.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TCIASQLError, import_optional
from .supplementary import CORE, TABLES, fetched_folder, file_stem, index_folder, table_files

if TYPE_CHECKING:
    import pandas as pd

    from ..config import Settings

__all__ = ["SQLEngine", "engine_of"]

_ABSENT = re.compile(r"Table with name (\S+) does not exist", re.IGNORECASE)
_engines_lock = threading.Lock()


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class SQLEngine:
    """DuckDB over one client's IDC tables (see the module doc).

    Parameters
    ----------
    settings : Settings
        ``idc_index`` (the folder), ``idc_index_url`` and ``cache_dir`` (fetched tables).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.duckdb = import_optional("duckdb", "idc", "SQL over the IDC index")
        self._lock = threading.Lock()
        self._connection: Any = None
        self._views: dict[str, Path] = {}
        self._broken: dict[str, tuple[Path, str]] = {}
        self._seen: dict[str, tuple[str, int, int]] = {}  # table -> its file as last viewed

    def __repr__(self) -> str:
        return f"SQLEngine(tables={sorted(self._views)})"

    def _connect(self) -> Any:
        """The connection, made once: reading only the two folders, configuration locked."""
        if self._connection is None:
            folders = [index_folder(self.settings), fetched_folder(self.settings)]
            connection = self.duckdb.connect(":memory:")
            allowed = ", ".join(_literal(str(f.resolve()) + "/") for f in folders)
            connection.execute(f"SET allowed_directories = [{allowed}]")
            connection.execute("SET enable_external_access = false")
            connection.execute("SET lock_configuration = true")
            self._connection = connection
        return self._connection

    def refresh(self) -> dict[str, Path]:
        """Make a view for each table present and not yet viewed; returns the views."""
        with self._lock:
            connection = self._connect()
            for table, file in table_files(self.settings).items():
                path = file.path.resolve()
                try:
                    stat = path.stat()
                except OSError:
                    continue
                seen = (str(path), stat.st_size, stat.st_mtime_ns)
                if self._seen.get(table) == seen:
                    continue  # viewed (or found unreadable) as it is now
                self._seen[table] = seen
                try:
                    connection.execute(
                        f"CREATE OR REPLACE VIEW {_quote(table)} AS "
                        f"SELECT * FROM read_parquet({_literal(str(path))})"
                    )
                except self.duckdb.Error as exc:
                    self._broken[table] = (path, str(exc).partition("\n")[0])
                    self._views.pop(table, None)
                else:
                    self._views[table] = path
                    self._broken.pop(table, None)
            return dict(self._views)

    @property
    def tables(self) -> list[str]:
        """list of str: the tables a query can name now."""
        return sorted(self.refresh())

    def _cursor(self) -> Any:
        """A cursor of its own for one query (a DuckDB connection is not for several threads)."""
        with self._lock:
            return self._connect().cursor()

    def _check(self, cursor: Any, query: Any) -> str:
        """The query if it is one reading statement, else TCIASQLError (nothing run)."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str of SQL, not {type(query).__name__}")
        if not query.strip():
            raise TCIASQLError("the query is empty", self._views)
        duckdb = self.duckdb
        try:
            statements = cursor.extract_statements(query)
        except duckdb.Error as exc:
            raise TCIASQLError(str(exc), self._views) from exc
        if len(statements) != 1:
            raise TCIASQLError(
                f"one statement at a time, not {len(statements)}", self._views
            )
        kind = statements[0].type
        if kind not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
            raise TCIASQLError(
                f"only reading is allowed: a {kind.name} statement is refused (the IDC index is "
                "read-only; SELECT from it, then change the DataFrame)",
                self._views,
            )
        return query

    def _absent(self, table: str) -> TCIASQLError:
        """The error for a table IDC has and the folder lacks."""
        if table in CORE:
            how = (
                f"it ships in idc-index-data as {file_stem(table)}.parquet; point idc_index at a "
                "folder that has it"
            )
        else:
            how = f"fetch it with c.fetch_index({table!r}) (or: intake-tcia fetch-index {table})"
        return TCIASQLError(f"table {table} is not present: {how}", self._views)

    def _named(self, cursor: Any, query: str) -> set[str]:
        """The tables a query names (none known when DuckDB cannot tell without running it)."""
        try:
            return set(cursor.get_table_names(query))
        except self.duckdb.Error:
            return set()

    def query(self, query: str) -> pd.DataFrame:
        """The answer to one reading SQL statement, as a DataFrame (see the module doc).

        Raises
        ------
        TypeError
            ``query`` is not a str.
        TCIASQLError
            Not one reading statement (refused before it runs), a syntax error, an unknown
            table or column (DuckDB's message), a table IDC has but the folder lacks (named,
            with the call that fetches it), an unreadable parquet file (named).
        """
        views = self.refresh()
        cursor = self._cursor()
        try:
            return self._run(cursor, self._check(cursor, query), views)
        finally:
            cursor.close()

    def _run(self, cursor: Any, query: str, views: dict[str, Path]) -> pd.DataFrame:
        """Run a checked query on its cursor: an absent or unreadable table named first."""
        for table in sorted(self._named(cursor, query)):
            if table in self._broken:
                path, message = self._broken[table]
                raise TCIASQLError(
                    f"table {table}: the file {str(path)!r} cannot be read: {message}",
                    views,
                    path=str(path),
                )
            if table not in views and table in TABLES:
                raise self._absent(table)
        try:
            return cursor.execute(query).df()
        except self.duckdb.Error as exc:
            missing = _ABSENT.search(str(exc))
            table = missing.group(1).strip("\"'") if missing else None
            if table in TABLES and table not in views:
                raise self._absent(table) from exc
            raise TCIASQLError(str(exc), views) from exc

    def close(self) -> None:
        """Close the connection (a later query opens another)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
            self._connection = None
            self._views.clear()
            self._broken.clear()
            self._seen.clear()


def engine_of(owner: Any) -> SQLEngine:
    """The one :class:`SQLEngine` of a client (made on first use, from ``owner.settings``)."""
    engine = owner.__dict__.get("_idc_sql_engine")
    if engine is None:
        with _engines_lock:
            engine = owner.__dict__.get("_idc_sql_engine")
            if engine is None:
                engine = owner.__dict__["_idc_sql_engine"] = SQLEngine(owner.settings)
    return engine

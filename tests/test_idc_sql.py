"""c.sql: DuckDB SQL over IDC's index tables under idc-index's names, read-only.

Each answer is compared with DuckDB run directly on the same parquet files (views made here, by
hand), on the sample archive's index and on the real index installed with idc-index-data; the
queries are those IDC's tutorials start with, unchanged.
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from intake_tcia import TCIAClient
from intake_tcia.errors import TCIAError, TCIASQLError
from intake_tcia.idc.index import default_folder
from intake_tcia.idc.sql import SQLEngine
from intake_tcia.testing import write_idc_index

#: IDC-tutorial style queries (GROUP BY, JOIN with collections_index, LIKE, COUNT DISTINCT).
TUTORIAL = {
    "by collection and modality": (
        "SELECT collection_id, Modality, COUNT(*) AS series FROM index "
        "GROUP BY collection_id, Modality ORDER BY series DESC, collection_id, Modality"
    ),
    "join collections_index": (
        "SELECT i.collection_id, c.collection_name, COUNT(DISTINCT i.PatientID) AS patients, "
        "SUM(i.series_size_MB) AS size_MB FROM index AS i "
        "JOIN collections_index AS c ON i.collection_id = c.collection_id "
        "GROUP BY i.collection_id, c.collection_name ORDER BY i.collection_id"
    ),
    "like on SeriesDescription": (
        "SELECT SeriesInstanceUID, collection_id, SeriesDescription FROM index "
        "WHERE Modality = 'CT' AND SeriesDescription LIKE '%e%' ORDER BY SeriesInstanceUID"
    ),
    "count distinct patients": (
        "SELECT collection_id, COUNT(DISTINCT PatientID) AS patients FROM index "
        "GROUP BY ALL ORDER BY patients DESC, collection_id"
    ),
    "distinct collections": "SELECT DISTINCT(collection_id) FROM index ORDER BY 1",
}


def direct(folder: Path, query: str) -> pd.DataFrame:
    """DuckDB on the folder's files, with views made by hand under idc-index's names."""
    connection = duckdb.connect()
    for path in folder.glob("*.parquet"):
        name = "index" if path.stem == "idc_index" else path.stem
        connection.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{path}')")
    return connection.execute(query).df()


@pytest.fixture
def sample(idc_index: Path, tmp_cache: Path) -> TCIAClient:
    return TCIAClient(idc_index=idc_index, cache_dir=tmp_cache)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> TCIAClient:
    """A client of the real index installed with idc-index-data (about a million series)."""
    return TCIAClient(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("name", sorted(TUTORIAL))
def test_tutorial_queries_equal_duckdb_on_the_sample_index(sample, idc_index, name):
    got = sample.sql(TUTORIAL[name])
    assert len(got) > 0
    pd.testing.assert_frame_equal(got, direct(idc_index, TUTORIAL[name]))


@pytest.mark.parametrize("name", sorted(TUTORIAL))
def test_tutorial_queries_equal_duckdb_on_the_real_index(real, name):
    got = real.sql(TUTORIAL[name])
    assert len(got) > 0
    pd.testing.assert_frame_equal(got, direct(default_folder(), TUTORIAL[name]))


def test_real_index_counts_and_prior_versions_lookup(real):
    counts = real.sql("SELECT COUNT(*) AS n FROM index")
    assert counts["n"].iloc[0] > 900_000
    uid = real.sql(
        "SELECT SeriesInstanceUID FROM prior_versions_index ORDER BY SeriesInstanceUID LIMIT 1"
    )["SeriesInstanceUID"].iloc[0]
    query = (
        "SELECT SeriesInstanceUID, min_idc_version, max_idc_version, gcs_bucket "
        f"FROM prior_versions_index WHERE SeriesInstanceUID = '{uid}'"
    )
    got = real.sql(query)
    assert list(got["SeriesInstanceUID"].unique()) == [uid]
    pd.testing.assert_frame_equal(got, direct(default_folder(), query))


def test_prior_versions_lookup_on_the_sample_index(sample, idc_index):
    from intake_tcia.testing.idc_tables import write_idc_tables

    write_idc_tables(idc_index, idc_index, ("prior_versions_index",))
    uid = sample.sql("SELECT MIN(SeriesInstanceUID) AS uid FROM index")["uid"].iloc[0]
    query = (
        "SELECT p.SeriesInstanceUID, p.min_idc_version, p.max_idc_version, i.collection_id "
        "FROM prior_versions_index AS p JOIN index AS i USING (SeriesInstanceUID) "
        f"WHERE p.SeriesInstanceUID = '{uid}'"
    )
    got = sample.sql(query)
    assert got["SeriesInstanceUID"].tolist() == [uid]
    pd.testing.assert_frame_equal(got, direct(idc_index, query))


def test_tables_are_views_under_idc_index_names(sample):
    views = sample.sql(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name"
    )["view_name"].tolist()
    assert views == ["collections_index", "index", "version_metadata_index"]
    assert sample.sql("SELECT COUNT(*) AS n FROM duckdb_tables()")["n"].iloc[0] == 0  # no copies


def test_one_engine_per_client_reused(sample):
    sample.sql("SELECT 1")
    first = sample.__dict__["_idc_sql_engine"]
    sample.sql("SELECT 2")
    assert sample.__dict__["_idc_sql_engine"] is first
    assert TCIAClient(idc_index=sample.settings.idc_index).sql("SELECT 1 AS x")["x"].iloc[0] == 1


@pytest.mark.parametrize(
    "statement",
    [
        "DROP VIEW index",
        "CREATE TABLE copy AS SELECT * FROM index",
        "INSERT INTO index SELECT * FROM index",
        "DELETE FROM index",
        "UPDATE index SET Modality = 'XX'",
        "COPY (SELECT * FROM index) TO '{out}'",
        "ATTACH '{out}' AS other",
        "SET enable_external_access = true",
        "INSTALL httpfs",
        "SELECT 1; DROP VIEW index",
    ],
)
def test_writing_statements_are_refused_before_they_run(sample, tmp_path, statement):
    out = tmp_path / "written"
    before = sample.sql("SELECT COUNT(*) AS n FROM index")["n"].iloc[0]
    with pytest.raises(TCIASQLError) as caught:
        sample.sql(statement.format(out=out))
    assert "index" in caught.value.tables
    assert not out.exists()
    assert sample.sql("SELECT COUNT(*) AS n FROM index")["n"].iloc[0] == before
    assert sample.sql("SELECT COUNT(*) AS n FROM duckdb_tables()")["n"].iloc[0] == 0


def test_duckdb_reads_nothing_outside_the_index_folders(sample, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(TCIASQLError, match="disabled by configuration"):
        sample.sql(f"SELECT * FROM read_csv('{secret}')")


def test_sql_errors_carry_duckdbs_message_and_the_tables(sample):
    with pytest.raises(TCIASQLError) as syntax:
        sample.sql("SELEC collection_id FROM index")
    assert "syntax error" in syntax.value.reason
    assert syntax.value.tables == ["collections_index", "index", "version_metadata_index"]
    assert "(tables: collections_index, index, version_metadata_index)" in str(syntax.value)
    with pytest.raises(TCIASQLError, match='column "no_such_column" not found'):
        sample.sql("SELECT no_such_column FROM index")
    with pytest.raises(TCIASQLError, match="no_such_table"):
        sample.sql("SELECT * FROM no_such_table")
    assert isinstance(syntax.value, (TCIAError, ValueError))
    with pytest.raises(TypeError):
        sample.sql(b"SELECT 1")
    with pytest.raises(TCIASQLError, match="empty"):
        sample.sql("  ")


@pytest.mark.parametrize("table", ["sm_index", "clinical_index", "prior_versions_index"])
def test_an_absent_table_is_named_with_the_call_that_fetches_it(sample, table):
    with pytest.raises(TCIASQLError) as caught:
        sample.sql(f"SELECT i.* FROM index AS i JOIN {table} AS s USING (SeriesInstanceUID)")
    assert f"table {table} is not present" in str(caught.value)
    if table != "prior_versions_index":  # that one ships with the package, not fetched
        assert f"c.fetch_index('{table}')" in str(caught.value)


def test_a_corrupt_parquet_file_is_named(idc_index, tmp_cache):
    bad = idc_index / "version_metadata_index.parquet"
    bad.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    client = TCIAClient(idc_index=idc_index, cache_dir=tmp_cache)
    assert len(client.sql("SELECT * FROM collections_index")) > 0  # other tables still answer
    with pytest.raises(TCIASQLError) as caught:
        client.sql("SELECT * FROM version_metadata_index")
    assert caught.value.path == str(bad.resolve())
    assert str(bad.resolve()) in str(caught.value)
    write_idc_index(idc_index)  # mended: the next query reads it
    assert len(client.sql("SELECT * FROM version_metadata_index")) > 0


def test_a_table_added_to_the_folder_is_seen_by_the_next_query(sample, idc_index):
    frame = pd.DataFrame({"SeriesInstanceUID": ["1.2.3"], "note": ["added"]})
    frame.to_parquet(idc_index / "my_table.parquet")
    assert sample.sql("SELECT note FROM my_table")["note"].tolist() == ["added"]


def test_threads_query_one_engine_at_once(sample, idc_index):
    query = TUTORIAL["count distinct patients"]
    expected = direct(idc_index, query)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(5):
                pd.testing.assert_frame_equal(sample.sql(query), expected)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_engine_close_then_query_again(idc_index, tmp_cache):
    engine = SQLEngine(TCIAClient(idc_index=idc_index, cache_dir=tmp_cache).settings)
    assert engine.query("SELECT COUNT(*) AS n FROM index")["n"].iloc[0] > 0
    engine.close()
    assert engine.query("SELECT COUNT(*) AS n FROM collections_index")["n"].iloc[0] > 0


def test_closing_the_client_closes_its_sql_connection(idc_index, tmp_cache):
    client = TCIAClient(idc_index=idc_index, cache_dir=tmp_cache)
    client.sql("SELECT 1")
    engine = client.__dict__["_idc_sql_engine"]
    connection = engine._connection
    client.close()
    assert engine._connection is None
    with pytest.raises(duckdb.ConnectionException):
        connection.execute("SELECT 1")
    assert client.sql("SELECT COUNT(*) AS n FROM index")["n"].iloc[0] > 0  # opens anew

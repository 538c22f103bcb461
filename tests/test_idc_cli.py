"""intake-tcia sql / indices / fetch-index, run in-process against the sample archive's index."""

from __future__ import annotations

import io
import json

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from intake_tcia.cli import main
from intake_tcia.testing.idc_tables import IDCTablesServer

QUERY = ("SELECT collection_id, Modality, COUNT(*) AS n FROM index "
         "GROUP BY ALL ORDER BY collection_id, Modality")


@pytest.fixture
def run(idc_index, tmp_cache, capsys, monkeypatch):
    monkeypatch.setenv("INTAKE_TCIA_IDC_INDEX", str(idc_index))

    def run(*argv):
        code = main([*argv, "--cache-dir", str(tmp_cache)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def expected(idc_index) -> pd.DataFrame:
    connection = duckdb.connect()
    parquet = idc_index / "idc_index.parquet"
    connection.execute(f"CREATE VIEW \"index\" AS SELECT * FROM '{parquet}'")
    return connection.execute(QUERY).df()


def test_sql_as_a_table_csv_and_json(run, idc_index):
    want = expected(idc_index)
    code, out, err = run("sql", QUERY)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["collection_id", "Modality", "n"]
    assert len(out.splitlines()) == len(want) + 1
    code, out, err = run("sql", QUERY, "--csv")
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(out)), want, check_dtype=False)
    code, out, err = run("sql", QUERY, "--json")
    assert code == 0, err
    assert json.loads(out) == want.to_dict("records")


def test_sql_errors_are_one_line_and_status_1(run):
    code, out, err = run("sql", "DELETE FROM index")
    assert code == 1 and out == ""
    assert "a DELETE statement is refused" in err and len(err.splitlines()) == 1
    code, out, err = run("sql", "SELECT * FROM seg_index")
    assert code == 1 and "intake-tcia fetch-index seg_index" in err


def test_indices_and_fetch_index(run, idc_index, monkeypatch):
    code, out, err = run("indices")
    assert code == 0, err
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    rows = pq.read_metadata(idc_index / "idc_index.parquet").num_rows
    assert lines["index"][1:] == [str(rows), "True", "folder"]
    assert lines["seg_index"][2] == "False"
    with IDCTablesServer(idc_index) as tables:
        monkeypatch.setenv("INTAKE_TCIA_IDC_INDEX_URL", tables.url)
        code, out, err = run("fetch-index", "seg_index")
        assert code == 0, err
        assert out.strip().endswith("seg_index.parquet")
        code, out, err = run("indices", "--json")
        rows = {r["table"]: r for r in json.loads(out)}
        assert rows["seg_index"]["present"] and rows["seg_index"]["source"] == "fetched"
        monkeypatch.delenv("INTAKE_TCIA_IDC_INDEX_URL")
        code, out, err = run("fetch-index", "ct_index", "--idc-index-url", tables.url)
        assert code == 0, err
        assert tables.count("ct_index") == 1
        code, out, err = run("fetch-index", "seg_indx")
        assert code == 1 and "did you mean 'seg_index'" in err
        assert tables.count("seg_index") == 1


def test_the_demo_tours_sql_over_the_index(tmp_path):
    pytest.importorskip("PIL.Image")
    from intake_tcia.demo import run_demo

    lines: list[str] = []
    run_demo(output=tmp_path / "slice.png", echo=lines.append)
    text = "\n".join(lines)
    assert "8. IDC in its own terms: SQL over its index" in text
    after = text.split("8. IDC in its own terms")[1]
    assert "collection_id" in after and "pydicom_ct_series" in after

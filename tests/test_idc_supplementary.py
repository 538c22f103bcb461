"""c.indices() and c.fetch_index(name): IDC's supplementary indices fetched as idc-index fetches
them (the sample archive's, over loopback HTTP with a redirect), once, verified against the
schema idc-index-data ships, kept in the cache."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from intake_tcia import TCIAClient
from intake_tcia.config import IDC_INDEX_RELEASES, Settings
from intake_tcia.errors import TCIABackendError, TCIANotFoundError, TCIAResponseError
from intake_tcia.idc.supplementary import TABLES, check_schema, fetched_folder
from intake_tcia.testing.idc_tables import SUPPLEMENTARY, IDCTablesServer, write_idc_tables


@pytest.fixture
def tables(idc_index: Path):
    with IDCTablesServer(idc_index) as server:
        yield server


@pytest.fixture
def client(idc_index: Path, tables: IDCTablesServer, tmp_cache: Path) -> TCIAClient:
    return TCIAClient(idc_index=idc_index, idc_index_url=tables.url, cache_dir=tmp_cache)


def kept(client: TCIAClient) -> list[str]:
    folder = fetched_folder(client.settings)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_sample_tables_have_the_real_schemas(idc_index, tmp_path):
    folder = write_idc_tables(tmp_path, idc_index, SUPPLEMENTARY + ("prior_versions_index",))
    for name in SUPPLEMENTARY + ("prior_versions_index",):
        check_schema(name, folder / f"{name}.parquet")  # raises if it differs
    seg = pq.read_table(folder / "seg_index.parquet").to_pandas()
    index = pq.read_table(idc_index / "idc_index.parquet").to_pandas()
    assert set(seg["SeriesInstanceUID"]) == set(index.loc[index.Modality == "SEG",
                                                          "SeriesInstanceUID"])


def test_fetch_follows_the_redirect_keeps_the_file_and_fetches_once(client, tables, tmp_cache):
    path = client.fetch_index("seg_index")
    assert tables.requests == ["/release/seg_index.parquet", "/assets/seg_index.parquet"]
    assert path.parent == fetched_folder(client.settings) and path.is_file()
    assert client.fetch_index("seg_index") == path
    again = TCIAClient(idc_index=client.settings.idc_index, idc_index_url=tables.url,
                       cache_dir=tmp_cache)
    assert again.fetch_index("seg_index") == path
    assert tables.count("seg_index") == 1
    assert kept(client) == ["seg_index.parquet"]


def test_a_fetched_index_is_a_sql_table(client):
    with pytest.raises(Exception, match="c.fetch_index\\('seg_index'\\)"):
        client.sql("SELECT * FROM seg_index")
    client.fetch_index("seg_index")
    got = client.sql(
        "SELECT i.Modality, s.SeriesInstanceUID FROM index AS i "
        "JOIN seg_index AS s USING (SeriesInstanceUID)"
    )
    assert got["Modality"].tolist() == ["SEG"]


def test_threads_fetching_one_index_make_one_request(client, tables):
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(client.fetch_index("ct_index")))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and len(paths) == 6
    assert tables.count("ct_index") == 1


def test_a_table_already_present_fetches_nothing(client, tables, idc_index):
    assert client.fetch_index("collections_index") == idc_index / "collections_index.parquet"
    assert client.fetch_index("idc_index") == idc_index / "idc_index.parquet"
    with pytest.raises(TCIABackendError, match="ships in idc-index-data"):
        client.fetch_index("prior_versions_index")  # the sample folder lacks it
    assert tables.requests == []


def test_unknown_names_get_did_you_mean_before_any_request(client, tables):
    with pytest.raises(TCIABackendError, match="did you mean 'sm_index'"):
        client.fetch_index("sm_indx")
    with pytest.raises(TCIABackendError, match="no IDC index 'nothing_like_it'"):
        client.fetch_index("nothing_like_it")
    with pytest.raises(TypeError):
        client.fetch_index(3)
    assert tables.requests == []


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>not a parquet file</html>", "not a readable parquet file"),
        (parquet_bytes(pa.table({"SeriesInstanceUID": ["1.2"]})), "missing SegmentationType"),
        (None, "total_segments is string, not INTEGER"),
    ],
)
def test_an_index_that_fails_verification_is_not_kept(client, tables, body, message):
    if body is None:  # the right columns, one of the wrong type
        good = pq.read_table(io.BytesIO(tables.body("seg_index")))
        i = good.schema.get_field_index("total_segments")
        body = parquet_bytes(good.set_column(i, "total_segments",
                                             good["total_segments"].cast(pa.string())))
    tables.replaced["seg_index"] = body
    with pytest.raises(TCIAResponseError, match=message):
        client.fetch_index("seg_index")
    assert kept(client) == []
    assert not client.indices().set_index("table").loc["seg_index", "present"]


def test_an_index_larger_than_max_answer_bytes_is_cut_off(idc_index, tables, tmp_cache):
    client = TCIAClient(idc_index=idc_index, idc_index_url=tables.url, cache_dir=tmp_cache,
                        max_answer_bytes=100)
    with pytest.raises(TCIAResponseError, match="more than 100 bytes"):
        client.fetch_index("seg_index")
    assert kept(client) == []


def test_an_index_the_server_lacks_is_not_found(idc_index, tables, tmp_cache):
    client = TCIAClient(idc_index=idc_index, idc_index_url=tables.url + "nothing/",
                        cache_dir=tmp_cache)
    with pytest.raises(TCIANotFoundError):
        client.fetch_index("seg_index")
    assert kept(client) == []


def test_indices_lists_every_table_with_rows_columns_presence_and_source(client, idc_index):
    client.fetch_index("seg_index")
    frame = client.indices()
    assert list(frame.columns) == ["table", "rows", "columns", "present", "source"]
    assert list(frame["table"]) == list(TABLES)
    rows = frame.set_index("table")
    index = pq.read_table(idc_index / "idc_index.parquet")
    assert rows.loc["index", "rows"] == index.num_rows
    assert rows.loc["index", "columns"] == index.column_names
    assert rows.loc["index", "source"] == "folder"
    assert rows.loc["seg_index", "source"] == "fetched" and rows.loc["seg_index", "rows"] == 1
    assert pd.isna(rows.loc["sm_index", "rows"]) and not rows.loc["sm_index", "present"]
    assert "SegmentationType" in rows.loc["seg_index", "columns"]
    assert "ObjectiveLensPower" in rows.loc["sm_index", "columns"]  # from the schema file


def test_indices_of_the_installed_package(tmp_cache):
    rows = TCIAClient(cache_dir=tmp_cache).indices().set_index("table")
    assert rows.loc["index", "source"] == "package" and rows.loc["index", "rows"] > 900_000
    assert rows.loc["prior_versions_index", "present"]


def test_idc_index_url_setting(monkeypatch):
    from importlib.metadata import version

    default = Settings().idc_index_url
    assert default == f"{IDC_INDEX_RELEASES}{version('idc-index-data')}/"
    assert default.startswith(
        "https://github.com/ImagingDataCommons/idc-index-data/releases/download/")
    monkeypatch.setenv("INTAKE_TCIA_IDC_INDEX_URL", "http://127.0.0.1:9/tables")
    assert Settings.from_env().idc_index_url == "http://127.0.0.1:9/tables/"
    assert Settings.from_env(idc_index_url="https://example.org/x/").idc_index_url == (
        "https://example.org/x/")
    with pytest.raises(ValueError, match="idc_index_url"):
        Settings(idc_index_url="ftp://example.org/")

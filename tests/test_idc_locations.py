"""The compact UID -> location table ``backend="auto"`` and ``"idc"`` look series up in: the
same answers as a scan of the index, built once per index version, read without parquet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from intake_tcia.idc.index import IDCIndex, index_fingerprint
from intake_tcia.idc.locations import KEYS_FILE, table_for
from intake_tcia.testing import ArchiveServer


def test_the_table_answers_as_the_index_scan(idc_index: Path, tmp_path: Path) -> None:
    index = IDCIndex(idc_index)
    uids = pq.read_table(idc_index / "idc_index.parquet")["SeriesInstanceUID"].to_pylist()
    scanned = index.series_locations(uids)
    table = table_for(idc_index, tmp_path / "cache")
    found, irregular = table.lookup([*uids, "1.2.3.4.5", "9" * 65, ""])
    assert irregular == [] and len(found) == len(scanned) == len(set(uids))
    for row in scanned.to_dict("records"):
        got = found[row["SeriesInstanceUID"]]
        for column in ("StudyInstanceUID", "Collection", "aws_bucket", "crdc_series_uuid",
                       "instanceCount", "series_size_MB"):
            assert got[column] == row[column], column
    folder = tmp_path / "cache" / "idc-index" / index_fingerprint(idc_index)
    assert (folder / KEYS_FILE).is_file()


def test_a_uid_listed_twice_is_found_at_its_first_row(idc_index: Path, tmp_path: Path) -> None:
    path = idc_index / "idc_index.parquet"
    rows = pq.read_table(path)
    first = rows.slice(0, 1)
    uuid = first.schema.get_field_index("crdc_series_uuid")
    field = first.schema.field(uuid)
    again = first.set_column(uuid, field, pa.array(["later"], field.type))
    pq.write_table(pa.concat_tables([rows, again]), path)
    uid = first["SeriesInstanceUID"][0].as_py()
    found, _ = table_for(idc_index, tmp_path / "cache").lookup([uid])
    assert found[uid]["crdc_series_uuid"] == first["crdc_series_uuid"][0].as_py()


def test_a_changed_index_gets_a_table_of_its_own(
    server: ArchiveServer, idc_index: Path, tmp_path: Path
) -> None:
    path = idc_index / "idc_index.parquet"
    rows = pq.read_table(path)
    uid = rows["SeriesInstanceUID"][0].as_py()
    assert uid in table_for(idc_index, tmp_path / "cache").lookup([uid])[0]
    pq.write_table(rows.slice(1), path)  # a new version of the index lacks the series
    assert table_for(idc_index, tmp_path / "cache").lookup([uid]) == ({}, [])
    assert len(list((tmp_path / "cache" / "idc-index").iterdir())) == 2


def test_looking_up_reads_no_parquet(idc_index: Path, tmp_path: Path) -> None:
    uid = pq.read_table(idc_index / "idc_index.parquet")["SeriesInstanceUID"][0].as_py()
    cache = str(tmp_path / "cache")
    table_for(idc_index, Path(cache))  # built here, once
    code = (f"import sys\nfrom intake_tcia.idc.locations import table_for\n"
            f"found = table_for({str(idc_index)!r}, {cache!r}).lookup([{uid!r}])[0]\n"
            f"assert {uid!r} in found, found\n"
            "print('pyarrow.parquet' in sys.modules, 'pyarrow.dataset' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["False", "False"]


def test_no_cache_no_table(idc_index: Path) -> None:
    assert table_for(idc_index, None) is None


def test_a_row_the_table_cannot_keep_is_left_to_the_index(idc_index: Path, tmp_path: Path) -> None:
    path = idc_index / "idc_index.parquet"
    rows = pq.read_table(path)
    column = rows.schema.get_field_index("crdc_series_uuid")
    field = rows.schema.field(column)
    values = rows["crdc_series_uuid"].to_pylist()
    values[0] = "x" * 40  # a plain name, longer than a UUID
    pq.write_table(rows.set_column(column, field, pa.array(values, field.type)), path)
    uid = rows["SeriesInstanceUID"][0].as_py()
    found, irregular = table_for(idc_index, tmp_path / "cache").lookup([uid])
    assert found == {} and irregular == [uid]

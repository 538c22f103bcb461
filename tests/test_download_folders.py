"""Download folders: metadata named as the server's text or typed gives one folder; placing a
series leaves the cache's records current (no hashing again on the next use) and asks a file
system without reflinks for one only once."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from intake_tcia.client import TCIAClient
from intake_tcia.retrieval import files
from intake_tcia.retrieval.cache import RECORD_NAME
from intake_tcia.retrieval.layouts import series_folder, whole_number
from intake_tcia.testing import ArchiveServer

CT_COLLECTION = "Pydicom-CT-Series"
TYPED_LAYOUT = "{SeriesDate}/{SeriesNumber}/{SeriesInstanceUID}"


def _client(server: ArchiveServer, cache: Path) -> TCIAClient:
    return TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url, cache_dir=cache,
                      backend="nbia", retries=1, backoff_factor=0.01)


@pytest.fixture
def dated_uid(server: ArchiveServer) -> str:
    series = server.archive.series
    ct = series[(series["Collection"] == CT_COLLECTION) & series["SeriesDate"].notna()
                & series["SeriesNumber"].notna()]
    return ct["SeriesInstanceUID"].iloc[0]


def test_dates_and_numbers_name_one_folder_from_text_from_a_frame_and_from_the_cache(
    server: ArchiveServer, tmp_path: Path, dated_uid: str
) -> None:
    with _client(server, tmp_path / "cache") as client:
        row = client.series_metadata(dated_uid).iloc[0]  # typed: a Timestamp and an int
        expected = Path(row["SeriesDate"].strftime("%Y-%m-%d"), str(row["SeriesNumber"]),
                        dated_uid)
        # the UID alone: the layout's fields come from getSeriesMetadata's text
        fresh = client.download(dated_uid, tmp_path / "text", layout=TYPED_LAYOUT, progress=False)
        # a typed frame: its values are used as they are
        frame = client.download(client.series_metadata(dated_uid), tmp_path / "frame",
                                layout=TYPED_LAYOUT, progress=False)
    server.clear_log()
    with _client(server, tmp_path / "cache") as client:  # the values kept in the cache's record
        cached = client.download(dated_uid, tmp_path / "cached", layout=TYPED_LAYOUT,
                                 progress=False)
    assert server.count("getSeriesMetadata") == 0
    for root, table in (("text", fresh), ("frame", frame), ("cached", cached)):
        assert Path(table["path"].iloc[0]) == tmp_path / root / expected, root
    assert isinstance(row["SeriesDate"], pd.Timestamp)


def test_placing_a_series_leaves_its_cache_record_current(
    server: ArchiveServer, tmp_path: Path, dated_uid: str
) -> None:
    with _client(server, tmp_path / "cache") as client:
        client.download(dated_uid, tmp_path / "dest", progress=False)
        folder = client.cache.series_path(dated_uid)
        record = json.loads((folder / RECORD_NAME).read_text())
        for instance in record["instances"]:
            stat = (folder / instance["name"]).stat()
            # the link into dest moved each file's change time; the record says so
            assert stat.st_nlink == 2
            assert instance["ctime_ns"] == stat.st_ctime_ns
            assert instance["mtime_ns"] == stat.st_mtime_ns


class _NoReflinks:
    """An ``fcntl`` whose FICLONE fails as on ext4 (or with ``code``), counting the attempts."""

    def __init__(self, code: int) -> None:
        self.code, self.calls = code, 0

    def ioctl(self, *args: object) -> None:
        self.calls += 1
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize(("code", "asked"), [(errno.EOPNOTSUPP, 1), (errno.ENOSPC, 3)])
def test_a_file_system_without_reflinks_is_asked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, asked: int
) -> None:
    refusing = _NoReflinks(code)
    monkeypatch.setattr(files, "fcntl", refusing)
    monkeypatch.setattr(files, "_NO_REFLINKS", set())
    (tmp_path / "dest").mkdir()
    for i in range(3):
        source = tmp_path / f"{i}.dcm"
        source.write_bytes(b"x" * (i + 1))
        assert files.place_file(source, tmp_path / "dest" / source.name) == "link"
        assert os.path.samefile(source, tmp_path / "dest" / source.name)
    assert refusing.calls == asked  # a transient error (ENOSPC) does not rule reflinks out


@pytest.mark.parametrize(("value", "number"), [
    (5, 5), ("26405888", 26405888), (" 50 ", 50), (3.0, 3), (np.int64(7), 7),
    ("393360.000000", 393360), ("50.0", 50), (2.5, None), ("2.5", None), (float("nan"), None),
    ("nan", None), ("1e400", None), (True, None), (None, None), ("x", None), ("²", None),
    ("9" * 5000, None), ("-3", None), (-2, None),
])
def test_sizes_and_counts_are_whole_numbers_or_nothing(value: object, number: int | None) -> None:
    # what is not a whole number is dropped, and getSeriesSize asked instead
    assert whole_number(value) == number


@pytest.mark.parametrize(("metadata", "folder"), [
    ({"SeriesDate": "05-27-2015", "SeriesNumber": "500.000000"}, "2015-05-27/500"),
    ({"SeriesDate": "2015-05-27 00:00:00", "SeriesNumber": 500}, "2015-05-27/500"),
    ({"SeriesDate": pd.Timestamp("2015-05-27"), "SeriesNumber": np.int64(500)}, "2015-05-27/500"),
    ({"SeriesDate": "27.05.2015", "SeriesNumber": "n/a"}, "27.05.2015/n_a"),  # as given
    ({"SeriesDate": " ", "SeriesNumber": None}, "unknown/unknown"),
])
def test_layout_values_are_typed_where_they_can_be(
    tmp_path: Path, metadata: dict, folder: str
) -> None:
    assert series_folder(tmp_path, TYPED_LAYOUT, "1.2.3", metadata) == tmp_path / folder / "1.2.3"

"""A series' files as the next step after download() takes them, and read_series' short echo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from intake_tcia.client import TCIAClient
from intake_tcia.datasets import DatasetList, dicom_paths
from intake_tcia.segmentation import read_segmentation
from intake_tcia.volume import volume_from_files


def _uid(server, modality: str) -> str:
    table = server.archive.series
    rows = table[(table["Collection"] == "Pydicom-CT-Series") & (table["Modality"] == modality)]
    return str(rows["SeriesInstanceUID"].iloc[0])


@pytest.fixture
def client(server, tmp_cache: Path):
    with TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                    cache_dir=tmp_cache) as c:
        yield c


def test_a_downloaded_folder_is_what_volume_from_files_takes(client, server, tmp_path: Path):
    uid = _uid(server, "CT")
    table = client.download([uid], tmp_path / "downloads", progress=False)
    folder = table.path[0]
    assert isinstance(folder, str) and Path(folder).is_dir()
    files = client.fetch_series(uid).files
    expected = volume_from_files(files)
    for given in (folder, Path(folder), [folder], [Path(folder)]):  # str walked letter by letter
        got = volume_from_files(given)
        np.testing.assert_array_equal(got.array, expected.array)
        np.testing.assert_array_equal(got.affine, expected.affine)
    # the folder's record and LICENSE are not DICOM and are left out
    assert all(not Path(p).name.startswith(".") and Path(p).name != "LICENSE"
               for p in dicom_paths(folder))
    assert len(dicom_paths(folder)) == len(files)


def test_read_segmentation_takes_two_folders(client, server, tmp_path: Path):
    pytest.importorskip("highdicom")
    seg_uid, ct_uid = _uid(server, "SEG"), _uid(server, "CT")
    table = client.download([seg_uid, ct_uid], tmp_path / "downloads", progress=False)
    folders = dict(zip(table.SeriesInstanceUID, table.path, strict=True))
    seg = read_segmentation(folders[seg_uid], Path(folders[ct_uid]))
    np.testing.assert_array_equal(seg.masks, server.archive.annotation_truth(seg_uid))


def test_client_read_volume_is_the_volume_of_the_cached_files(client, server):
    uid = _uid(server, "CT")
    volume = client.read_volume(uid)
    assert volume.metadata["SeriesInstanceUID"] == uid
    np.testing.assert_array_equal(volume.array,
                                  volume_from_files(client.fetch_series(uid).files).array)
    with pytest.raises(ValueError, match="series_uid"):
        client.read_volume("not a uid")


def test_paths_that_are_not_there_or_not_dicom_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        dicom_paths(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no DICOM here")
    with pytest.raises(FileNotFoundError, match="no DICOM files in folder"):
        volume_from_files(tmp_path / "empty")
    with pytest.raises(TypeError, match="int"):
        dicom_paths(3)


def test_read_series_echoes_one_line_and_is_still_a_list(client, server):
    uid = _uid(server, "CT")
    slices = client.read_series(uid)
    assert isinstance(slices, list) and isinstance(slices, DatasetList)
    assert all(isinstance(ds, pydicom.Dataset) for ds in slices)
    text = repr(slices)
    assert "\n" not in text and len(text) < 200, text
    rows, columns = slices[0].Rows, slices[0].Columns
    assert text == f"<{len(slices)} DICOM datasets of series {uid}: CT {rows}x{columns}>"
    assert slices == list(slices) and slices[1:] == list(slices)[1:]
    pretty = pytest.importorskip("IPython.lib.pretty")
    assert pretty.pretty(slices) == text  # what a notebook cell shows


def test_a_series_source_read_echoes_one_line(env, server):
    import intake

    uid = _uid(server, "CT")
    src = intake.open_tcia_series(uid)
    data = src.read()
    assert isinstance(data, list) and "\n" not in repr(data) and "DICOM datasets" in repr(data)

"""Where output goes: a manifest into a folder not made yet, a download into a file (refused
once), NLST's series and others' into one manifest each."""

from __future__ import annotations

from pathlib import Path

import pytest

from intake_tcia.cli import main
from intake_tcia.client import TCIAClient
from intake_tcia.manifest import read_manifest, write_manifest, write_manifests

UID = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def run(server, tmp_cache, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def run(*argv):
        options = ["--api-url", server.api_url, "--nlst-api-url", server.nlst_api_url,
                   "--cache-dir", str(tmp_cache)]
        code = main([*argv, *options])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.parametrize("spelt", ["newdir/", "a/b/newdir/"])
def test_manifest_into_a_folder_not_there_yet(run, tmp_path: Path, spelt: str):
    code, out, err = run("manifest", "--collection", "Pydicom-CT-Series", "-o", spelt)
    assert code == 0, err
    folder = tmp_path / spelt
    assert folder.is_dir()
    written = list(folder.iterdir())
    assert len(written) == 1 and written[0].suffix == ".tcia"
    assert written[0].name in out
    assert read_manifest(written[0]).series_uids


def test_write_manifest_makes_missing_parents_of_a_file(tmp_path: Path):
    path = write_manifest([UID], tmp_path / "x" / "y" / "cohort.tcia")
    assert path == tmp_path / "x" / "y" / "cohort.tcia" and read_manifest(path).series_uids == [UID]


@pytest.mark.parametrize("below", ["", "sub/folder"])
def test_a_download_into_a_file_is_refused_once_before_any_request(server, tmp_cache, tmp_path,
                                                                    below):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    uids = list(server.archive.series["SeriesInstanceUID"][:3])
    with TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                    cache_dir=tmp_cache) as client:
        server.reset()
        with pytest.raises(NotADirectoryError, match="not a folder") as caught:
            client.download(uids, afile / below if below else afile, progress=False)
    assert str(afile) in str(caught.value)
    assert server.requests == []


def test_cli_download_into_a_file_is_one_line(run, server, tmp_path: Path):
    (tmp_path / "afile").write_text("x")
    uid = server.archive.series["SeriesInstanceUID"].iloc[0]
    code, out, err = run("download", uid, "-o", "afile")
    assert code == 1 and err.count("\n") == 1 and "not a folder" in err, err


def test_search_into_a_manifest_of_nlst_and_others_writes_one_per_server(run, tmp_path: Path):
    # the README's example: chest series released since 2020 are NLST's and others'
    code, out, err = run("search", "--body-part", "CHEST", "--released-from", "2020-01-01",
                         "--manifest", "chest.tcia")
    assert code == 0, err
    main_manifest = read_manifest(tmp_path / "chest.tcia")
    nlst_manifest = read_manifest(tmp_path / "chest-NLST.tcia")
    assert main_manifest.series_uids and nlst_manifest.series_uids
    assert "nlst" in nlst_manifest.properties["downloadServerUrl"]
    assert "nlst" not in main_manifest.properties["downloadServerUrl"]
    assert out.count("wrote") == 2 and "chest-NLST.tcia" in out


def test_write_manifests_into_a_folder_names_both(server, tmp_path: Path):
    import pandas as pd

    frame = pd.DataFrame({"SeriesInstanceUID": [UID, UID + "1"], "Collection": ["X", "NLST"]})
    first, second = write_manifests(frame, f"{tmp_path}/out/")
    assert first.parent == second.parent == tmp_path / "out"
    assert second.name == first.name.replace(".tcia", "-NLST.tcia")
    assert read_manifest(second).series_uids == [UID + "1"]
    assert write_manifests(frame.iloc[:1], tmp_path / "one.tcia") == [tmp_path / "one.tcia"]

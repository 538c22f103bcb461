"""Where output goes: a manifest into a folder not made yet, a download into a file (refused once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from intake_tcia.cli import main
from intake_tcia.client import TCIAClient
from intake_tcia.manifest import read_manifest, write_manifest

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

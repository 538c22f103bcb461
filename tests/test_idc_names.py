"""IDC collection ids (``pydicom_ct_series``, ``lidc_idri``) accepted wherever a collection name
is, on both backends, through collections_index; the frames keep TCIA's names."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from intake_tcia import TCIAClient
from intake_tcia.cli import main
from intake_tcia.config import Settings
from intake_tcia.errors import TCIAUnknownNameError
from intake_tcia.idc.names import collection_name
from intake_tcia.sources import TCIACatalog
from intake_tcia.testing.idc_index import collection_id

NAMES = ["Pydicom-CT-Series", "Pydicom-DICOMDIR", "NLST"]


@pytest.fixture(params=["nbia", "idc"])
def client(request, server, tmp_cache, idc_index):
    with TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                    cache_dir=tmp_cache, backend=request.param, idc_index=idc_index,
                    retries=0) as c:
        yield c


def sort(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns[:4])).reset_index(drop=True)


@pytest.mark.parametrize("name", NAMES)
def test_an_id_and_a_name_give_equal_frames(client, server, name):
    cid = collection_id(name)
    assert cid != name
    for method, kwargs in [
        ("series", {}),
        ("patients", {}),
        ("studies", {}),
        ("modalities", {}),
        ("series", {"modality": "CT"}),
    ]:
        by_id = getattr(client, method)(collection=cid, **kwargs)
        by_name = getattr(client, method)(collection=name, **kwargs)
        assert len(by_name) > 0, (method, name)
        pd.testing.assert_frame_equal(sort(by_id), sort(by_name))
        if "Collection" in by_id.columns:
            assert set(by_id["Collection"]) == {name}  # TCIA's name, not the id


def test_search_and_counts_take_ids(client):
    pd.testing.assert_frame_equal(
        client.search(collection=["pydicom_ct_series", "nlst"]),
        client.search(collection=["Pydicom-CT-Series", "NLST"]),
    )
    pd.testing.assert_frame_equal(
        client.value_counts("modality", collection="pydicom_dicomdir"),
        client.value_counts("modality", collection="Pydicom-DICOMDIR"),
    )


def test_an_unknown_id_still_names_the_closest(client):
    with pytest.raises(TCIAUnknownNameError, match="did you mean"):
        client.series(collection="pydicom_ct_seriez")


def test_catalog_and_filesystem_take_ids(env, idc_index, monkeypatch):
    monkeypatch.setenv("INTAKE_TCIA_IDC_INDEX", str(idc_index))
    cat = TCIACatalog()
    assert list(cat["pydicom_ct_series"]) == list(cat["Pydicom-CT-Series"])
    assert cat["pydicom_ct_series"].name == "Pydicom-CT-Series"
    import fsspec

    fs = fsspec.filesystem("tcia", skip_instance_cache=True)
    patients = {p.rsplit("/", 1)[-1] for p in fs.ls("pydicom_ct_series", detail=False)}
    assert patients == {p.rsplit("/", 1)[-1] for p in fs.ls("Pydicom-CT-Series", detail=False)}


def test_cli_takes_ids(server, tmp_cache, idc_index, capsys, monkeypatch):
    monkeypatch.setenv("INTAKE_TCIA_IDC_INDEX", str(idc_index))
    options = ["--api-url", server.api_url, "--nlst-api-url", server.nlst_api_url,
               "--cache-dir", str(tmp_cache), "--csv"]
    frames = []
    for given in ("pydicom_ct_series", "Pydicom-CT-Series"):
        assert main(["series", "--collection", given, *options]) == 0
        frames.append(pd.read_csv(io.StringIO(capsys.readouterr().out), dtype=str))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert set(frames[0]["Collection"]) == {"Pydicom-CT-Series"}


def test_real_collections_index_maps_ids(tmp_cache):
    settings = Settings(cache_dir=tmp_cache)
    assert collection_name(settings, "lidc_idri") == "LIDC-IDRI"
    assert collection_name(settings, "tcga_luad") == "TCGA-LUAD"
    assert collection_name(settings, "c4kc_kits") == "C4KC-KiTS"
    assert collection_name(settings, "LIDC-IDRI") == "LIDC-IDRI"  # a name stays
    assert collection_name(settings, "not_a_collection") == "not_a_collection"


def test_nothing_is_mapped_without_an_index(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert collection_name(Settings(idc_index=empty), "lidc_idri") == "lidc_idri"

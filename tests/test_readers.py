"""The intake 2 (V2) datatypes, readers and example catalog against the sample archive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import intake
import numpy as np
import pytest
from intake.readers.entry import Catalog

from intake_tcia.client import TCIAClient
from intake_tcia.readers import (
    TCIAQuery,
    TCIAQueryReader,
    TCIASeries,
    TCIASeriesReader,
    TCIASeriesToDask,
    TCIASeriesToNumpy,
    TCIASeriesToXarray,
)
from intake_tcia.volume import volume_from_files

CATALOG = Path(__file__).resolve().parent.parent / "catalogs" / "v2_example.yaml"
CT = "Pydicom-CT-Series"


@pytest.fixture
def client(server, tmp_cache):
    return TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url, cache_dir=tmp_cache)


def _ct_uid(server) -> str:
    table = server.archive.series
    rows = table[(table["Collection"] == CT) & (table["Modality"] == "CT")]
    return rows["SeriesInstanceUID"].iloc[0]


def test_readers_are_registered_for_their_datatypes():
    query = TCIAQuery("series", {"collection": CT})
    assert query.possible_readers["importable"] == [TCIAQueryReader]
    outputs = set(TCIASeries("1.2.3").possible_outputs.values())
    assert outputs == {"builtins:list", "numpy:ndarray", "dask.array:Array", "xarray:DataArray"}
    assert isinstance(query.to_reader("pandas"), TCIAQueryReader)


def test_importing_sources_first_loads_the_readers_cleanly():
    """intake loads intake_tcia.readers while intake_tcia.sources imports intake."""
    code = "import intake_tcia.sources, intake; print(intake.readers.readers.recommend"
    code += "(intake_tcia.readers.TCIAQuery('series'))['importable'])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stderr == ""
    assert "TCIAQueryReader" in result.stdout


def test_query_reader_reads_a_dataframe(env, client):
    frame = TCIAQuery("series", {"collection": CT, "modality": "CT"}).to_reader().read()
    assert frame.equals(client.series(collection=CT, modality="CT"))


def test_query_datatype_rejects_unknown_endpoints():
    with pytest.raises(ValueError, match="unknown endpoint"):
        TCIAQuery("getImage")


def test_client_options_in_the_datatype(server, tmp_cache, monkeypatch):
    monkeypatch.setenv("INTAKE_TCIA_API_URL", "http://127.0.0.1:9/none/")
    options = {
        "api_url": server.api_url,
        "nlst_api_url": server.nlst_api_url,
        "cache_dir": str(tmp_cache),
    }
    frame = TCIAQueryReader(TCIAQuery("patients", {"collection": CT}, options)).read()
    assert frame["PatientID"].tolist() == ["PYCT-001"]


def test_series_readers(env):
    uid = _ct_uid(env)
    data = TCIASeries(uid, collection=CT)
    datasets = TCIASeriesReader(data).read()
    assert len(datasets) == 10
    assert env.count("getImage") == 1
    expected = volume_from_files([p for _, p in env.archive.instances(uid)]).array
    np.testing.assert_array_equal(TCIASeriesToNumpy(data).read(), expected)
    lazy = TCIASeriesToDask(data).read()
    assert lazy.chunks[0] == (1,) * 10
    np.testing.assert_array_equal(lazy.compute(), expected)
    da = TCIASeriesToXarray(data).read()
    assert da.dims == ("z", "y", "x")
    assert da.attrs["DOI"] == env.archive.collection(CT).doi_url
    assert env.count("getImage") == 1  # every later read came from the cache


def test_series_reader_round_trips_through_a_v2_catalog(env, tmp_path):
    cat = Catalog()
    cat.give_name(cat.add_entry(TCIASeriesToXarray(TCIASeries(_ct_uid(env)))), "volume")
    path = tmp_path / "cat.yaml"
    cat.to_yaml_file(str(path))
    reopened = intake.open_catalog(str(path))
    assert reopened.volume.read().shape == (10, 128, 128)


def test_v2_example_catalog(env):
    cat = intake.open_catalog(str(CATALOG))
    assert isinstance(cat, Catalog)
    assert set(cat) == {"collections", "ct_series", "ct_dicom", "ct_volume", "ct_dask"}
    assert env.count() == 0
    assert "NLST" in set(cat.collections.read()["Collection"])
    ct = cat.ct_series.read()
    assert ct["SeriesInstanceUID"].tolist() == [_ct_uid(env)]
    nlst = cat(collection="NLST").ct_series.read()
    assert len(nlst) == 2 and set(nlst["Collection"]) == {"NLST"}
    volume = cat.ct_volume.read()
    assert volume.shape == (10, 128, 128)
    assert volume.attrs["LicenseName"] == env.archive.collection(CT).license_name
    assert len(cat.ct_dicom.read()) == 10
    assert cat.ct_dask.read().shape == (10, 128, 128)
    assert env.count("getImage") == 1

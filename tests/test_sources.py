"""The intake V1 drivers and catalogs against the sample archive, counting the requests sent."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import intake
import numpy as np
import pandas as pd
import pydicom
import pytest

from intake_tcia.client import TCIAClient
from intake_tcia.errors import TCIAUnknownNameError
from intake_tcia.sources import TCIACatalog, TCIAQuerySource, TCIASeriesSource
from intake_tcia.volume import volume_from_files

CATALOGS = Path(__file__).resolve().parent.parent / "catalogs"
CT = "Pydicom-CT-Series"
LISTINGS = ("getCollectionValues", "getPatient", "getPatientStudy", "getSeries")


@pytest.fixture
def cat(env):
    return intake.open_catalog(str(CATALOGS / "tcia.yaml"))


def _row(server, collection=CT, modality="CT") -> pd.Series:
    table = server.archive.series
    return table[(table["Collection"] == collection) & (table["Modality"] == modality)].iloc[0]


def _browse(cat, row):
    return cat.tcia[row["Collection"]][row["PatientID"]][row["StudyInstanceUID"]][
        row["SeriesInstanceUID"]
    ]


def _positions(datasets) -> list[float]:
    """Positions along the slice normal, computed here from the headers."""
    out = []
    for ds in datasets:
        orientation = np.array(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        out.append(float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))))
    return out


# -- the YAML catalog and tcia_query ------------------------------------------------------------


def test_open_catalog_lists_entries_without_requests(cat, env):
    assert list(cat) == ["tcia", "collections", "patients", "studies", "series", "shared_cart",
                        "search"]
    assert cat.tcia.container == "catalog"
    assert {cat[name].container for name in list(cat)[1:]} == {"dataframe"}
    assert env.count() == 0


def test_collections_include_nlst_from_its_own_host(cat, env):
    frame = cat.collections.read()
    assert set(frame["Collection"]) == {"Pydicom-DICOMDIR", CT, "NLST"}
    assert env.count("getCollectionValues", host="main") == 1
    assert env.count("getCollectionValues", host="nlst") == 1


def test_series_user_parameters_filter_on_the_server(cat, env):
    frame = cat.series(collection=CT, modality="ct").read()
    expected = env.archive.series
    expected = expected[(expected["Collection"] == CT) & (expected["Modality"] == "CT")]
    assert sorted(frame["SeriesInstanceUID"]) == sorted(expected["SeriesInstanceUID"])
    (request,) = [r for r in env.requests if r.endpoint == "getSeries"]
    # parameters left at their default "" are not sent at all
    assert {k: v for k, v in request.params.items() if k != "format"} == {
        "Collection": CT,
        "Modality": "ct",
    }


def test_series_without_parameters_lists_both_hosts(cat, env):
    frame = cat.series.read()
    assert sorted(frame["SeriesInstanceUID"]) == sorted(env.archive.series["SeriesInstanceUID"])


def test_an_unknown_catalog_key_names_the_closest(cat, env):
    with pytest.raises(KeyError, match="did you mean 'Pydicom-CT-Series'") as caught:
        cat.tcia["Pydicom-CT-Seires"]
    assert isinstance(caught.value, TCIAUnknownNameError)
    with pytest.raises(TCIAUnknownNameError, match="no patient 'PYCT-01' in collection"):
        cat.tcia["Pydicom-CT-Series"]["PYCT-01"]
    with pytest.raises(TCIAUnknownNameError, match="no collection 'Nope'"):
        cat.series(collection="Nope").read()


def test_patients_and_studies_parameters(cat, env):
    patients = cat.patients(collection="NLST").read()
    assert sorted(patients["PatientID"]) == ["100002", "100003"]
    assert env.count("getPatient", host="nlst") == 1
    studies = cat.studies(collection="NLST", patient_id="100002").read()
    assert len(studies) == 2
    assert studies["StudyDate"].dtype.kind == "M"
    assert studies["SeriesCount"].tolist() == [1, 1]


def test_query_discover_read_once_and_close(cat, env):
    src = cat.series(collection=CT)
    info = src.discover()
    # CT, MR, and the SEG, RTSTRUCT and RTDOSE of the CT
    assert info["shape"] == (5, len(src.read().columns))
    assert info["dtype"]["ImageCount"] == "Int64"
    assert info["metadata"]["parameters"] == {"collection": CT}
    src.read()
    assert env.count("getSeries") == 1
    src.close()
    src.read()
    assert env.count("getSeries") == 2


def test_query_to_dask(cat):
    src = cat.series(collection=CT)
    ddf = src.to_dask()
    assert ddf.npartitions == 1
    computed = ddf.compute()
    assert computed["SeriesInstanceUID"].tolist() == src.read()["SeriesInstanceUID"].tolist()


def test_query_aliases_and_fixed_parameters(env):
    counts = TCIAQuerySource("getModalityValuesAndCounts", {"collection": CT}).read()
    assert dict(zip(counts["Modality"], counts["Count"], strict=True)) == {
        "CT": 1, "MR": 1, "SEG": 1, "RTSTRUCT": 1, "RTDOSE": 1}
    assert env.requests[-1].endpoint == "getModalityValuesAndCounts"


def test_query_is_validated_before_any_request(env):
    with pytest.raises(ValueError, match="unknown endpoint 'getImage'"):
        TCIAQuerySource("getImage")
    with pytest.raises(TypeError, match="colection"):
        TCIAQuerySource("series", {"colection": CT})
    with pytest.raises(TypeError, match="api_uri"):
        TCIAQuerySource("series", api_uri="http://x")
    with pytest.raises(ValueError, match="study_uid"):
        TCIAQuerySource("series", {"study_uid": "not-a-uid"}).read()
    assert env.count() == 0


def test_client_keywords_as_arguments(server, tmp_cache, monkeypatch):
    """Arguments beat the environment (here pointing nowhere)."""
    monkeypatch.setenv("INTAKE_TCIA_API_URL", "http://127.0.0.1:9/none/")
    src = TCIAQuerySource(
        "patients",
        {"collection": CT},
        api_url=server.api_url,
        nlst_api_url=server.nlst_api_url,
        cache_dir=str(tmp_cache),
        timeout=5,
        retries=0,
    )
    assert src.read()["PatientID"].tolist() == ["PYCT-001"]
    assert src.client.settings.retries == 0
    assert src.client is TCIAQuerySource("collections", **src._client_options).client


def test_query_source_pickles(cat):
    src = cat.series(collection=CT)
    clone = pickle.loads(pickle.dumps(src))
    assert clone.read().equals(src.read())


# -- tcia_cat --------------------------------------------------------------------------------------


def test_browse_path_is_lazy_one_query_per_level(cat, env):
    row = _row(env)
    tcia = cat.tcia
    assert env.count() == 0  # opening the browsable catalog asks nothing
    src = _browse(cat, row)
    assert isinstance(src, TCIASeriesSource)
    assert src.series_uid == row["SeriesInstanceUID"]
    assert [env.count(e, host="main") for e in LISTINGS] == [1, 1, 1, 1]
    assert env.count("getImage") == 0
    assert env.count() == 5  # collections on both hosts, then one query per level
    assert tcia.level == "collection"


def test_series_entry_metadata_from_the_listing(cat, env):
    row = _row(env)
    src = _browse(cat, row)
    meta = src.metadata
    assert meta["Modality"] == "CT"
    assert meta["ImageCount"] == row["ImageCount"] == 10
    assert meta["FileSize"] == row["FileSize"]
    assert meta["DataDescriptionURI"] == env.archive.collection(CT).doi_url
    assert meta["LicenseName"] == env.archive.collection(CT).license_name
    assert isinstance(meta["SeriesDate"], str)  # YAML-friendly
    study = cat.tcia[CT][row["PatientID"]][row["StudyInstanceUID"]]
    entry = study._entries[row["SeriesInstanceUID"]]
    assert (
        "CT" in entry.describe()["description"] and "10 images" in entry.describe()["description"]
    )


def test_levels_list_what_the_archive_holds(cat, env):
    table = env.archive.series
    nlst = cat.tcia["NLST"]
    assert sorted(nlst) == sorted(set(table.loc[table["Collection"] == "NLST", "PatientID"]))
    studies = nlst["100002"]
    assert len(studies) == 2
    assert env.count("getPatient", host="nlst") == 1
    assert env.count("getPatientStudy", host="nlst") == 1
    assert env.count("getPatient", host="main") == 0


def test_unknown_key_raises_key_error(cat):
    with pytest.raises(KeyError):
        cat.tcia["No-Such-Collection"]
    with pytest.raises(KeyError):
        cat.tcia[CT]["nobody"]


def test_walk_and_search(cat, env):
    assert set(cat.walk(depth=1)) == {
        "tcia",
        "collections",
        "patients",
        "studies",
        "series",
        "shared_cart",
        "search",
    }
    walked = cat.tcia.walk(depth=2)
    assert {CT, "NLST", f"{CT}.PYCT-001", "NLST.100003"} <= set(walked)
    row = _row(env)
    study = cat.tcia[CT][row["PatientID"]][row["StudyInstanceUID"]]
    found = study.search("chest")  # BodyPartExamined of the CT only
    assert list(found) == [row["SeriesInstanceUID"]]
    assert isinstance(found[row["SeriesInstanceUID"]], TCIASeriesSource)
    assert env.count("getImage") == 0


def test_catalog_levels_must_be_given_in_order(env):
    with pytest.raises(TypeError, match="patient level needs the collection"):
        TCIACatalog(patient_id="PYCT-001")
    assert list(TCIACatalog(CT)) == ["PYCT-001"]


def test_listing_is_asked_once_until_reloaded(env):
    cat = TCIACatalog()
    assert list(cat) == list(cat)
    assert len(cat) == 3 and CT in cat
    assert env.count("getCollectionValues", host="main") == 1
    cat.force_reload()  # what intake does once ttl has passed
    list(cat)
    assert env.count("getCollectionValues", host="main") == 2


# -- tcia_series -----------------------------------------------------------------------------------


def test_open_tcia_series_discovers_without_pixels(env):
    row = _row(env)
    src = intake.open_tcia_series(row["SeriesInstanceUID"])
    info = src.discover()
    first = pydicom.dcmread(env.archive.instances(row["SeriesInstanceUID"])[0][1])
    volume = volume_from_files([p for _, p in env.archive.instances(row["SeriesInstanceUID"])])
    assert info["shape"] == volume.shape == (10, first.Rows, first.Columns)
    assert np.dtype(info["dtype"]) == volume.dtype
    assert info["npartitions"] == 10
    assert info["metadata"]["Collection"] == CT
    assert env.count("getImage") == env.count("getSingleImage") == 0
    assert env.count() == 2  # one getSeries, one getDicomTags


def test_discover_from_a_catalog_entry_needs_only_the_header(cat, env):
    src = _browse(cat, _row(env))
    env.clear_log()
    src.discover()
    assert [r.endpoint for r in env.requests] == ["getDicomTags"]


def test_read_fetches_once_then_serves_from_the_cache(cat, env):
    row = _row(env)
    src = _browse(cat, row)
    datasets = src.read()
    assert len(datasets) == 10
    assert {ds.SeriesInstanceUID for ds in datasets} == {row["SeriesInstanceUID"]}
    positions = _positions(datasets)
    assert positions == sorted(positions)
    assert datasets[0].pixel_array.shape == (datasets[0].Rows, datasets[0].Columns)
    assert env.count("getImage") == 1
    env.clear_log()
    assert len(src.read()) == 10
    again = intake.open_tcia_series(row["SeriesInstanceUID"], collection=CT)
    assert len(again.read()) == 10
    again.discover()  # header from the cached files
    assert env.count("getImage") == 0
    assert [r.endpoint for r in env.requests] == ["getSeries"]


def test_read_partition_is_one_instance_in_slice_order(env):
    src = TCIASeriesSource(_row(env)["SeriesInstanceUID"])
    whole = src.read()
    assert src.discover()["npartitions"] == len(whole)
    for i in (0, 4, 9):
        assert src.read_partition(i).SOPInstanceUID == whole[i].SOPInstanceUID
    with pytest.raises(IndexError):
        src.read_partition(10)
    assert env.count("getImage") == 1


def test_to_dask_is_lazy_per_slice_and_matches_the_volume(env):
    row = _row(env)
    src = TCIASeriesSource(row["SeriesInstanceUID"])
    array = src.to_dask()
    assert array.shape == src.discover()["shape"]
    assert array.chunks[0] == (1,) * 10
    files = [p for _, p in env.archive.instances(row["SeriesInstanceUID"])]
    np.testing.assert_array_equal(array.compute(), volume_from_files(files).array)


def test_to_xarray_carries_doi_licence_and_geometry(cat, env):
    row = _row(env)
    info = env.archive.collection(CT)
    da = _browse(cat, row).to_xarray()
    assert da.dims == ("z", "y", "x")
    assert da.shape == (10, 128, 128)
    assert np.all(np.diff(da["z"].values) > 0)
    assert da.attrs["DOI"] == info.doi_url
    assert da.attrs["LicenseName"] == info.license_name
    assert da.attrs["LicenseURI"] == info.license_uri
    assert da.attrs["Collection"] == CT
    assert da.attrs["SeriesInstanceUID"] == row["SeriesInstanceUID"]
    assert np.asarray(da.attrs["affine"]).shape == (4, 4)
    lazy = TCIASeriesSource(row["SeriesInstanceUID"]).to_xarray(lazy=True)
    assert lazy.chunks is not None
    np.testing.assert_array_equal(lazy.values, da.values)


def test_nlst_series_is_fetched_from_the_nlst_host(cat, env):
    row = _row(env, collection="NLST")
    src = _browse(cat, row)
    assert len(src.read()) == row["ImageCount"]
    assert env.count("getImage", host="nlst") == 1
    assert env.count("getImage", host="main") == 0


def test_unknown_series_raises_not_found(env):
    from intake_tcia.errors import TCIANotFoundError

    with pytest.raises(TCIANotFoundError):
        TCIASeriesSource("1.2.3.4.5").discover()
    with pytest.raises(ValueError, match="series_uid"):
        TCIASeriesSource("1.2.x")


def test_series_source_pickles(env):
    src = TCIASeriesSource(_row(env)["SeriesInstanceUID"], collection=CT)
    clone = pickle.loads(pickle.dumps(src))
    assert clone.series_uid == src.series_uid
    assert clone.discover()["shape"] == src.discover()["shape"]


def test_shared_client_per_settings(env, tmp_path):
    a = TCIASeriesSource(_row(env)["SeriesInstanceUID"])
    b = TCIAQuerySource("collections")
    c = TCIAQuerySource("collections", cache_dir=str(tmp_path))
    assert a.client is b.client
    assert c.client is not a.client
    assert isinstance(a.client, TCIAClient)


# -- examples.yaml: mixing TCIA with a local table and nesting tcia.yaml ---------------------------


@pytest.fixture
def examples(env):
    return intake.open_catalog(str(CATALOGS / "examples.yaml"))


def test_examples_parameterised_queries(examples, env):
    assert examples.ct_series.read()["SeriesInstanceUID"].tolist() == [
        _row(env)["SeriesInstanceUID"]
    ]
    nlst = examples.ct_series(collection="NLST").read()
    assert len(nlst) == 2 and set(nlst["Modality"]) == {"CT"}
    with pytest.raises(ValueError, match="allowed"):
        examples.ct_series(modality="XX")
    counts = examples.modality_counts(collection="Pydicom-DICOMDIR").read()
    # patients with a series of each modality
    assert dict(zip(counts["Modality"], counts["Count"], strict=True)) == {
        "CR": 1,
        "CT": 2,
        "MR": 1,
    }
    assert len(examples.released_since(since="1990-01-01").read()) == len(env.archive.series)


def test_examples_mix_a_local_csv_with_tcia(examples, env):
    clinical = examples.clinical.read()
    assert clinical["PatientID"].tolist()[-2:] == ["100002", "100003"]
    series = examples.patient_series(patient_id="100002").read()
    merged = clinical.merge(series, on="PatientID")
    assert len(merged) == 2
    assert set(merged["cohort"]) == {"screening"}
    assert env.count("getSeries", host="nlst") == 1  # found on the NLST host by PatientID


def test_examples_series_entry_is_the_sample_ct(examples, env):
    src = examples.ct_volume
    assert isinstance(src, TCIASeriesSource)
    assert src.series_uid == _row(env)["SeriesInstanceUID"]
    assert src.discover()["shape"] == (10, 128, 128)
    assert env.count("getImage") == 0


def test_examples_nest_the_archive_catalog(examples, env):
    nested = examples.archive
    assert list(nested) == ["tcia", "collections", "patients", "studies", "series", "shared_cart",
                        "search"]
    row = _row(env)
    assert isinstance(_browse(nested, row), TCIASeriesSource)
    assert env.count("getImage") == 0


def test_secrets_given_as_keywords_are_not_pickled_or_written_to_yaml(env):
    src = TCIAQuerySource("collections", password="s3cret-pw", api_key="k3y-123")
    for blob in (pickle.dumps(src), src.yaml().encode()):
        assert b"s3cret-pw" not in blob and b"k3y-123" not in blob
    assert src.client.settings.password == "s3cret-pw"  # still used in this process
    assert len(pickle.loads(pickle.dumps(src)).read()) == len(src.read())


def test_shared_cart_entry(cat, env):
    from intake_tcia.testing.server import SAMPLE_CART

    frame = cat.shared_cart(cart=SAMPLE_CART).read()
    assert len(frame) > 0
    assert set(frame["SeriesInstanceUID"]) <= set(env.archive.series["SeriesInstanceUID"])
    assert env.count("getContentsByName") == 2  # one per host: a cart may hold NLST series
    with pytest.raises(TypeError, match="name"):
        cat.shared_cart().read()  # the cart's name left empty


def test_reprs_are_short_and_ask_nothing(cat, env):
    series = _row(env)
    assert repr(cat.series(collection="NLST")) == "TCIAQuerySource('series', collection='NLST')"
    study = cat.tcia[series["Collection"]][series["PatientID"]][series["StudyInstanceUID"]]
    src = study[series["SeriesInstanceUID"]]
    env.clear_log()
    assert repr(src) == (
        f"TCIASeriesSource({series['SeriesInstanceUID']!r}, collection={series['Collection']!r}: "
        f"CT {series['SeriesDescription']}, {series['ImageCount']} images)"
    )
    bare = TCIASeriesSource(series["SeriesInstanceUID"])
    assert repr(bare) == f"TCIASeriesSource({series['SeriesInstanceUID']!r})"
    assert env.count() == 0


def test_a_plain_script_calling_a_parameterised_entry_prints_no_warning(env):
    script = (f"import intake; cat = intake.open_catalog({str(CATALOGS / 'tcia.yaml')!r}); "
              "print(len(cat.series(collection='NLST', modality='CT').read()))")
    done = subprocess.run([sys.executable, "-c", script], env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (done.stdout.strip(), done.stderr) == ("2", "")  # intake's getshell warning is gone


def test_series_source_annotations_and_segmentation_sources(cat, env):
    pytest.importorskip("highdicom")
    xr = pytest.importorskip("xarray")
    ct = _browse(cat, _row(env))
    found = ct.annotations()
    assert sorted(found["Modality"]) == ["RTDOSE", "RTSTRUCT", "SEG"]
    for modality in ("SEG", "RTSTRUCT"):
        row = _row(env, modality=modality)
        src = _browse(cat, row)
        seg = src.segmentation()
        np.testing.assert_array_equal(
            seg.masks, env.archive.annotation_truth(row["SeriesInstanceUID"]))
        assert seg.image.metadata["SeriesInstanceUID"] == ct.series_uid
        ds = src.to_xarray()
        assert isinstance(ds, xr.Dataset) and ds["masks"].dims == ("segment", "z", "y", "x")
        np.testing.assert_array_equal(ds["masks"].values, seg.masks)
    dose_row = _row(env, modality="RTDOSE")
    dose = _browse(cat, dose_row).to_xarray()
    np.testing.assert_allclose(dose.values, env.archive.annotation_truth(
        dose_row["SeriesInstanceUID"]), rtol=1e-6)


def test_catalog_secrets_stay_out_of_saved_and_described_entries(tmp_path):
    from intake_tcia.testing import ArchiveServer

    with ArchiveServer(flavour="token") as server:
        server.users = {"nbia_guest": "", "alice": "s3cret-pw"}
        cat = intake.open_tcia_cat(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                                   cache_dir=tmp_path, retries=0, api_version="token",
                                   username="alice",
                                   password="s3cret-pw", api_key="k3y-123")
        collection = next(iter(cat))
        child = cat[collection]
        shown = [cat.serialize(), repr(cat._entries[collection]),
                 str(cat._entries[collection].describe()), child.yaml()]
        cat.save(str(tmp_path / "saved.yaml"))
        shown.append((tmp_path / "saved.yaml").read_text())
        patient = next(iter(child))  # the child asks with alice's token, given to it in memory
        shown += [child.serialize(), repr(child._entries[patient])]
        for text in shown:
            assert "s3cret-pw" not in text and "k3y-123" not in text and "alice" not in text
        logins = {r.params.get("username") for r in server.requests if r.endpoint == "oauth/token"}
        assert logins == {"alice", "nbia_guest"}  # NLST: the guest, not alice

"""The tcia:// filesystem against the sample archive, counting the requests it sends."""

from __future__ import annotations

import io
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import fsspec
import pydicom
import pytest

from intake_tcia.errors import TCIAIntegrityError
from intake_tcia.fs import AUTO_SERIES_AFTER, TCIAFileSystem

CT = "Pydicom-CT-Series"


@pytest.fixture
def options(server, tmp_cache):
    """Client keywords pointing at the sample archive, with a fresh cache."""
    return {
        "api_url": server.api_url,
        "nlst_api_url": server.nlst_api_url,
        "cache_dir": str(tmp_cache),
        "retries": 0,
    }


@pytest.fixture
def fs(options):
    return TCIAFileSystem(skip_instance_cache=True, **options)


def _series(server, collection=CT, modality="CT"):
    """(row, folder path, [(SOPInstanceUID, file), ...]) of one sample series."""
    table = server.archive.series
    row = table[(table["Collection"] == collection) & (table["Modality"] == modality)].iloc[0]
    path = "/".join(row[["Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"]])
    return row, path, server.archive.instances(row["SeriesInstanceUID"])


def _instance(server, collection=CT, modality="CT", index=0):
    """(tcia path, local file of the archive) of one instance."""
    _, path, instances = _series(server, collection, modality)
    sop_uid, file = instances[index]
    return f"{path}/{sop_uid}.dcm", file


def test_registered_and_no_request_before_use(server, options):
    assert fsspec.get_filesystem_class("tcia") is TCIAFileSystem
    fs = fsspec.filesystem("tcia", skip_instance_cache=True, **options)
    clone = pickle.loads(pickle.dumps(fs))
    assert isinstance(clone, TCIAFileSystem)
    assert clone.storage_options == fs.storage_options
    assert server.count() == 0


def test_options_are_checked(options):
    with pytest.raises(ValueError, match="fetch"):
        TCIAFileSystem(fetch="everything", skip_instance_cache=True)
    with pytest.raises(TypeError, match="colour"):
        TCIAFileSystem(colour="red", skip_instance_cache=True)


def test_strip_protocol():
    assert TCIAFileSystem._strip_protocol("tcia://A/B C/") == "A/B C"
    assert TCIAFileSystem._strip_protocol("tcia://") == ""
    assert TCIAFileSystem._strip_protocol("/A") == "A"


def test_ls_collections_once_per_host(fs, server):
    entries = fs.ls("tcia://")
    names = {e["name"] for e in entries}
    assert names == set(server.archive.series["Collection"])
    assert all(e["type"] == "directory" for e in entries)
    assert server.count(endpoint="getCollectionValues") == 2  # main host and NLST host
    fs.ls("")
    assert server.count() == 2


def test_each_level_costs_one_request(fs, server):
    row, series_path, instances = _series(server)
    collection, patient, study, series = series_path.split("/")
    table = server.archive.series

    server.clear_log()
    assert fs.ls(collection, detail=False) == [f"{collection}/{patient}"]
    assert server.count() == server.count(endpoint="getPatient") == 1

    server.clear_log()
    studies = fs.ls(f"{collection}/{patient}")
    expected = set(table.loc[table["PatientID"] == patient, "StudyInstanceUID"])
    assert {e["name"].rsplit("/", 1)[1] for e in studies} == expected
    assert server.count() == server.count(endpoint="getPatientStudy") == 1

    server.clear_log()
    listing = {e["name"]: e for e in fs.ls(f"{collection}/{patient}/{study}")}
    assert server.count() == server.count(endpoint="getSeries") == 1
    entry = listing[series_path]
    assert entry["type"] == "directory"
    assert entry["size"] == row["FileSize"]
    assert entry["ImageCount"] == row["ImageCount"] == len(instances)
    assert entry["Modality"] == "CT"
    assert "SeriesDate" in entry or "StudyDate" in entry

    server.clear_log()
    files = fs.ls(series_path)
    assert server.count() == server.count(endpoint="getSOPInstanceUIDs") == 1
    assert sorted(e["name"] for e in files) == sorted(
        f"{series_path}/{u}.dcm" for u, _ in instances
    )
    assert all(e["type"] == "file" and e["size"] is None for e in files)

    server.clear_log()  # all of it again, from dircache
    fs.ls(collection), fs.ls(series_path), fs.info(series_path), fs.info(files[0]["name"])
    assert server.count() == 0


def test_invalidate_cache(fs, server):
    _, series_path, _ = _series(server)
    study_path = series_path.rsplit("/", 1)[0]
    fs.ls(study_path)
    fs.ls(series_path)
    server.clear_log()
    fs.invalidate_cache(study_path)  # the study and the series below it
    fs.ls(series_path)
    fs.ls(study_path)
    assert server.count() == 2
    fs.ls(series_path, refresh=True)
    assert server.count() == 3
    fs.invalidate_cache()
    fs.ls(study_path)
    assert server.count() == 4


def test_info_of_every_level(fs, server):
    row, series_path, instances = _series(server)
    assert fs.info("tcia://") == {"name": "", "type": "directory", "size": 0}
    assert fs.info(CT)["type"] == "directory"
    info = fs.info(f"tcia://{series_path}/")
    assert info["name"] == series_path
    assert info["size"] == row["FileSize"]
    instance = fs.info(f"{series_path}/{instances[-1][0]}.dcm")
    assert instance["type"] == "file"
    assert instance["SOPInstanceUID"] == instances[-1][0]
    assert fs.isdir(series_path) and not fs.isfile(series_path)
    assert fs.isfile(instance["name"]) and not fs.isdir(instance["name"])


def test_series_size_from_get_series_size(fs, server):
    row, series_path, _ = _series(server)
    fs.info(series_path)["size"] = None  # as for a getSeries row without FileSize
    server.clear_log()
    size = fs.info(series_path)["size"]
    assert size == fs.client.series_size(row["SeriesInstanceUID"])["TotalSizeInBytes"] > 0
    assert server.count(endpoint="getSeriesSize") == 2  # once by info, once by the check
    fs.info(series_path)
    assert server.count() == 2


def test_open_one_instance_transfers_only_it(fs, options, server):
    path, file = _instance(server)
    server.clear_log()
    with fs.open(path) as f:
        ds = pydicom.dcmread(f)
    assert ds.SOPInstanceUID == path.rsplit("/", 1)[1][: -len(".dcm")]
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
    assert server.count() == server.count(endpoint="getSingleImage") == 1
    assert server.count(endpoint="getImage") == 0

    # again, through this filesystem and through a new one on the same cache: no request
    assert fs.cat_file(path) == file.read_bytes()
    other = TCIAFileSystem(skip_instance_cache=True, **options)
    assert other.cat(f"tcia://{path}") == file.read_bytes()
    assert other.info(path)["size"] == file.stat().st_size
    assert server.count() == 1


def test_listing_shows_size_once_fetched(fs, server):
    _, series_path, instances = _series(server)
    (first, first_file), (second, second_file) = instances[:2]
    first, second = f"{series_path}/{first}.dcm", f"{series_path}/{second}.dcm"
    other = TCIAFileSystem(skip_instance_cache=True, **fs.storage_options)
    assert fs.info(first)["size"] is None
    assert other.info(second)["size"] is None
    fs.cat_file(first)  # this filesystem notes the size in its listing
    other.cat_file(first)
    fs.cat_file(second)  # the other one finds it on disk when asked
    server.clear_log()
    assert fs.info(first)["size"] == first_file.stat().st_size
    assert other.info(second)["size"] == second_file.stat().st_size
    sizes = [e["size"] for e in fs.ls(series_path)]
    assert server.count() == 0
    assert sum(size is None for size in sizes) == len(sizes) - 2


@pytest.mark.parametrize(
    ("start", "end"), [(None, None), (0, 132), (128, 132), (-10, None), (100, -100), (5, 2)]
)
def test_cat_file_ranges(fs, server, start, end):
    path, file = _instance(server)
    assert fs.cat_file(path, start=start, end=end) == file.read_bytes()[start:end]


def test_open_is_seekable_and_read_only(fs, server):
    path, file = _instance(server)
    with fs.open(path, "rb") as f:
        f.seek(128)
        assert f.read(4) == b"DICM"
        assert f.size == file.stat().st_size
    with pytest.raises(NotImplementedError, match="read-only"):
        fs.open(path, "wb")
    with pytest.raises(NotImplementedError, match="read-only"):
        fs.mkdir(f"{CT}/new")
    with pytest.raises(NotImplementedError, match="read-only"):
        fs.rm(path)


def test_get_file_and_get(fs, server, tmp_path):
    path, file = _instance(server)
    fs.get_file(f"tcia://{path}", str(tmp_path / "one.dcm"))
    assert (tmp_path / "one.dcm").read_bytes() == file.read_bytes()
    buffer = io.BytesIO()
    fs.get_file(path, buffer)
    assert buffer.getvalue() == file.read_bytes()

    _, series_path, instances = _series(server, "Pydicom-DICOMDIR", "MR")
    fs.get(f"tcia://{series_path}", str(tmp_path / "series"), recursive=True)
    got = sorted(p.name for p in (tmp_path / "series").rglob("*.dcm"))
    assert got == sorted(f"{u}.dcm" for u, _ in instances)


def test_fetch_series_policy(options, server):
    fs = TCIAFileSystem(fetch="series", skip_instance_cache=True, **options)
    _, series_path, instances = _series(server)
    server.clear_log()
    for sop_uid, file in instances:
        assert fs.cat_file(f"{series_path}/{sop_uid}.dcm") == file.read_bytes()
    assert server.count(endpoint="getImage") == 1
    assert server.count(endpoint="getSingleImage") == 0


def test_fetch_instance_policy_never_fetches_the_series(options, server):
    fs = TCIAFileSystem(fetch="instance", skip_instance_cache=True, **options)
    _, series_path, instances = _series(server)
    server.clear_log()
    for sop_uid, _ in instances:
        fs.cat_file(f"{series_path}/{sop_uid}.dcm")
    assert server.count(endpoint="getSingleImage") == len(instances)
    assert server.count(endpoint="getImage") == 0


def test_auto_policy_switches_to_the_series(fs, server):
    _, series_path, instances = _series(server)
    assert len(instances) > AUTO_SERIES_AFTER + 1
    server.clear_log()
    for sop_uid, file in instances:
        assert fs.cat_file(f"{series_path}/{sop_uid}.dcm") == file.read_bytes()
    assert server.count(endpoint="getSingleImage") == AUTO_SERIES_AFTER
    assert server.count(endpoint="getImage") == 1
    sizes = {e["name"]: e["size"] for e in fs.ls(series_path)}
    assert None not in sizes.values()


def test_cached_series_is_read_without_request(fs, server):
    _, series_path, instances = _series(server, "NLST")
    fs.client.fetch_series(series_path.rsplit("/", 1)[1], collection="NLST")
    server.clear_log()
    sop_uid, file = instances[2]
    with fs.open(f"tcia://{series_path}/{sop_uid}.dcm") as f:
        assert pydicom.dcmread(f).SOPInstanceUID == sop_uid
    assert fs.info(f"{series_path}/{sop_uid}.dcm")["size"] == file.stat().st_size
    assert server.count() == 0


def test_nlst_goes_to_its_host(fs, server):
    _, series_path, instances = _series(server, "NLST")
    collection, patient, study, series = series_path.split("/")
    for path in (collection, f"{collection}/{patient}", "/".join([collection, patient, study])):
        fs.ls(path)
    fs.ls(series_path)
    fs.cat_file(f"{series_path}/{instances[0][0]}.dcm")
    nlst = {
        endpoint: server.count(endpoint=endpoint, host="nlst")
        for endpoint in ("getPatient", "getPatientStudy", "getSeries", "getSOPInstanceUIDs")
    }
    assert nlst == dict.fromkeys(nlst, 1)
    assert server.count(endpoint="getSingleImage", host="nlst") == 1
    assert server.count(host="main") == 0


def test_find_glob_walk_exists(fs, server):
    table = server.archive.series
    patient = table.loc[table["Collection"] == CT, "PatientID"].iloc[0]
    expected = sorted(
        f"{CT}/{patient}/{r.StudyInstanceUID}/{r.SeriesInstanceUID}/{u}.dcm"
        for r in table[table["Collection"] == CT].itertuples()
        for u, _ in server.archive.instances(r.SeriesInstanceUID)
    )
    assert fs.find(f"tcia://{CT}") == expected
    assert fs.glob(f"tcia://{CT}/{patient}/*/*/*.dcm") == expected
    assert fs.glob(f"{CT}/*") == [f"{CT}/{patient}"]
    walked = [(root, sorted(dirs), files) for root, dirs, files in fs.walk(CT)]
    assert walked[0] == (CT, [patient], [])
    assert sum(len(files) for _, _, files in walked) == len(expected)
    assert fs.exists(expected[0]) and fs.exists(CT)
    assert not fs.exists("No-Such-Collection")
    assert not fs.exists(f"{CT}/NOBODY")
    assert not fs.exists(f"{CT}/{patient}/1.2.3")
    assert fs.isdir(CT) and not fs.isdir("No-Such-Collection")


def test_du_sums_series_sizes(fs, server):
    table = server.archive.series
    rows = table[table["Collection"] == CT]
    assert fs.du(CT) == rows["FileSize"].sum()
    per_series = fs.du(f"tcia://{CT}/", total=False)
    assert sorted(per_series.values()) == sorted(rows["FileSize"])
    assert server.count(endpoint="getSOPInstanceUIDs") == 0
    path, file = _instance(server)
    fs.cat_file(path)
    assert fs.du(path) == file.stat().st_size


def test_open_files_with_options(options, server):
    _, series_path, instances = _series(server, CT, "MR")
    patient = series_path.split("/")[1]
    files = fsspec.open_files(f"tcia://{CT}/{patient}/*/*/*.dcm", tcia=options)
    table = server.archive.series
    in_patient = table[(table["Collection"] == CT) & (table["PatientID"] == patient)]
    # the CT, the MR and the CT's SEG, RTSTRUCT and RTDOSE
    assert len(files) == sum(len(server.archive.instances(uid))
                             for uid in in_patient["SeriesInstanceUID"])
    assert len(in_patient) == 5
    with files[0] as f:
        assert pydicom.dcmread(f).Modality in {"CT", "MR"}
    path = f"tcia://{series_path}/{instances[0][0]}.dcm"
    with fsspec.open(path, **options) as f:
        assert f.read() == instances[0][1].read_bytes()


@pytest.mark.parametrize("chain", ["simplecache", "filecache"])
def test_chained_caches(chain, options, server, tmp_path):
    path, file = _instance(server)
    url = f"{chain}::tcia://{path}"
    for _ in range(2):
        with fsspec.open(
            url, tcia=options, **{chain: {"cache_storage": str(tmp_path / chain)}}
        ) as f:
            assert pydicom.dcmread(f).SOPInstanceUID == path.rsplit("/", 1)[1][:-4]
    assert server.count(endpoint="getSingleImage") == 1


def test_pickled_filesystem_reads_in_another_process(fs, server):
    path, file = _instance(server, "NLST")
    clone = pickle.loads(pickle.dumps(fs))
    assert clone.fetch == fs.fetch and clone.storage_options == fs.storage_options
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        data = pool.submit(fs.cat_file, path).result(timeout=120)
    assert data == file.read_bytes()
    assert server.count(endpoint="getSingleImage") == 1
    server.clear_log()
    assert fs.cat_file(path) == data  # the worker's fetch is in the shared cache
    assert server.count() == 0


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("A/B/C/D/E/F", "not a tcia path"),
        (f"{CT}/P/not-a-uid", "not a DICOM UID"),
        (f"{CT}/P/1.2/1.2a", "not a DICOM UID"),
        (f"{CT}/P/1.2/1.3/1.4", "followed by '.dcm'"),
        (f"{CT}//1.2", "not a tcia path"),
    ],
)
def test_malformed_paths(fs, server, path, reason):
    for call in (fs.ls, fs.info, fs.cat_file):
        with pytest.raises(FileNotFoundError, match=reason) as caught:
            call(path)
        assert path in str(caught.value)
    assert server.count() == 0


def test_unknown_paths(fs, server):
    _, series_path, _ = _series(server)
    collection, patient, study, _ = series_path.split("/")
    with pytest.raises(FileNotFoundError, match="No-Such-Collection"):
        fs.ls("No-Such-Collection")
    with pytest.raises(FileNotFoundError, match="NOBODY"):
        fs.ls(f"{collection}/NOBODY")
    with pytest.raises(FileNotFoundError, match="1.2.3.4"):
        fs.ls(f"{collection}/{patient}/{study}/1.2.3.4")
    unknown = f"no patient_id 'NOBODY' in collection '{collection}'"
    with pytest.raises(FileNotFoundError, match=unknown):
        fs.info(f"{collection}/NOBODY/{study}/1.2.3.4/1.2.dcm")
    with pytest.raises(FileNotFoundError, match="9.9.9"):
        fs.info(f"{series_path}/9.9.9.dcm")
    with pytest.raises(FileNotFoundError, match="9.9.9"):
        fs.cat_file(f"{series_path}/9.9.9.dcm")
    with pytest.raises(IsADirectoryError, match=study):
        fs.open(f"{collection}/{patient}/{study}")


def test_single_image_is_checked(fs, server, tmp_cache):
    path, _ = _instance(server)
    server.faults.add("html", endpoint="getSingleImage")
    with pytest.raises(TCIAIntegrityError, match="DICOM"):
        fs.cat_file(path)
    assert not list(tmp_cache.rglob("*.dcm"))  # nothing kept
    assert fs.cat_file(path)[128:132] == b"DICM"


def test_ukey_is_stable(fs, server):
    path, _ = _instance(server)
    assert fs.ukey(path) == fs.ukey(f"tcia://{path}") != fs.ukey(path.replace(".dcm", "1.dcm"))
    assert server.count() == 0


def test_secrets_given_as_keywords_are_not_pickled_or_serialised(server, tmp_cache):
    fs = TCIAFileSystem(
        api_url=server.api_url,
        nlst_api_url=server.nlst_api_url,
        cache_dir=str(tmp_cache),
        password="s3cret-pw",
        api_key="k3y-123",
        skip_instance_cache=True,
    )
    assert b"s3cret-pw" not in pickle.dumps(fs) and b"k3y-123" not in pickle.dumps(fs)
    assert "s3cret-pw" not in fs.to_json() and "k3y-123" not in fs.to_json()
    copy = pickle.loads(pickle.dumps(fs))
    assert copy.storage_options["api_url"] == server.api_url


def test_repr_names_the_fetch_policy_host_and_cache(options, server):
    fs = TCIAFileSystem(fetch="series", skip_instance_cache=True, **options)
    assert repr(fs) == (f"TCIAFileSystem(fetch='series', api_url={server.api_url!r}, "
                        f"cache_dir={options['cache_dir']!r})")
    assert server.count() == 0

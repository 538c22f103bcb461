"""One client, every NBIA dialect: the same queries and downloads give identical DataFrames.

Each flavour of the sample archive serves the same data as its v4 self, renamed and restyled as
that dialect does (intake_tcia.testing._flavours); the client must undo it all.
"""

import hashlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import requests

from intake_tcia import TCIAClient
from intake_tcia.cli import main
from intake_tcia.config import Settings
from intake_tcia.nbia.flavours import FLAVOURS, detect_flavour, flavour_for
from intake_tcia.schema import SCHEMAS, frame_from_records, with_old_names
from intake_tcia.sources import TCIAQuerySource
from intake_tcia.testing import ArchiveServer
from intake_tcia.testing.server import SAMPLE_API_KEY, SAMPLE_CART

#: Real NBIA answers, copied from the project reference (shared/reference/samples).
SAMPLES = Path(__file__).resolve().parent / "data"
DICOMDIR = "Pydicom-DICOMDIR"
CT = "Pydicom-CT-Series"


def client_options(server):
    """Keywords for a client of ``server``, whatever its flavour."""
    options = {"api_url": server.api_url, "nlst_api_url": server.nlst_api_url,
               "datacite_url": server.datacite_url, "retries": 1, "backoff_factor": 0.01}
    if server.flavour == "legacy":
        options["api_key"] = SAMPLE_API_KEY
    if server.flavour == "token":  # a v4 URL: only the setting says a login is wanted
        options["api_version"] = "token"
    return options


@pytest.fixture(scope="module", params=sorted(FLAVOURS))
def flavoured(request):
    """The sample archive in each flavour (one server per flavour for this module)."""
    with ArchiveServer(flavour=request.param) as server:
        yield server


@pytest.fixture
def both(flavoured, server, tmp_path):
    """(client of the flavoured archive, client of the v4 archive), each with its own cache."""
    flavoured.reset()
    with (
        TCIAClient(cache_dir=tmp_path / "flavoured", **client_options(flavoured)) as theirs,
        TCIAClient(cache_dir=tmp_path / "v4", **client_options(server)) as v4,
    ):
        yield theirs, v4


def uids(server, host="main", n=2):
    table = server.archive.series
    return sorted(table.loc[table["host"] == host, "SeriesInstanceUID"])[:n]


QUERIES = {
    "collections": lambda c, s: c.collections(),
    "modalities": lambda c, s: c.modalities(collection=DICOMDIR),
    "body_parts": lambda c, s: c.body_parts(modality="CT"),
    "manufacturers": lambda c, s: c.manufacturers(collection=CT),
    "patients": lambda c, s: c.patients(),
    "patients_by_modality": lambda c, s: c.patients_by_modality(DICOMDIR, "MR"),
    "new_patients": lambda c, s: c.new_patients(DICOMDIR, "2000-01-31"),
    "studies": lambda c, s: c.studies(collection=DICOMDIR),
    "studies_of_nlst_patient": lambda c, s: c.studies(
        patient_id=s.archive.series.query("host == 'nlst'")["PatientID"].iloc[0]),
    "new_studies": lambda c, s: c.new_studies(DICOMDIR, "2001-12-31"),
    "series": lambda c, s: c.series(collection=DICOMDIR),
    "series_nlst": lambda c, s: c.series(collection="NLST", modality="MR"),
    "series_by_uid": lambda c, s: c.series(series_uid=uids(s, "nlst", 1)[0]),
    "updated_series": lambda c, s: c.updated_series("2000-01-01"),
    "series_metadata": lambda c, s: c.series_metadata(uids(s) + uids(s, "nlst", 1)),
    "shared_cart": lambda c, s: c.shared_cart(SAMPLE_CART),
    "unknown_cart": lambda c, s: c.shared_cart("no-such-cart"),
    "series_size": lambda c, s: pd.DataFrame([c.series_size(uids(s, "nlst", 1)[0])]),
    "sop_instance_uids": lambda c, s: pd.DataFrame({"SOP": c.sop_instance_uids(uids(s)[0])}),
}


@pytest.mark.parametrize("query", list(QUERIES))
def test_same_query_same_frame(both, flavoured, server, query):
    theirs, v4 = both
    expected = QUERIES[query](v4, server)
    pd.testing.assert_frame_equal(QUERIES[query](theirs, flavoured), expected)
    if query not in ("unknown_cart",):
        assert len(expected), "compare something"


def test_same_download_same_frame_and_files(both, flavoured, server, tmp_path):
    theirs, v4 = both
    wanted = uids(server) + uids(server, "nlst", 1)  # UIDs only: the layout needs metadata
    results = {}
    for name, client in (("flavoured", theirs), ("v4", v4)):
        dest = tmp_path / f"dest-{name}"
        frame = client.download(wanted, dest, progress=False)
        frame["path"] = [str(Path(p).relative_to(dest)) for p in frame["path"]]
        digests = [sorted(hashlib.md5(f.read_bytes()).hexdigest() for f in client.fetch_series(
            uid).files) for uid in wanted]
        results[name] = frame, digests
    pd.testing.assert_frame_equal(results["flavoured"][0], results["v4"][0])
    assert (results["flavoured"][0]["status"] == "downloaded").all()
    assert results["flavoured"][1] == results["v4"][1]


#: What each flavour's server must have been asked, as (endpoint, parameter, value); value None
#: means the parameter must be absent.
DIALECT = {
    "v4": [("NewPatientsInCollection", "fromDate", "01-31-2000"),
           ("getImage", "IncludeMD5", "Yes"), ("getContentsByName", "name", SAMPLE_CART)],
    "token": [("NewPatientsInCollection", "fromDate", "01-31-2000"),
              ("oauth/token", "grant_type", "password")],
    "v1": [("getNewPatientsInCollection", "Date", "2000/01/31"),
           ("getUpdatedSeries", "fromDate", "01/01/2000"),
           ("getImageWithMD5Hash", "IncludeMD5", None),
           ("getSeriesMetaData", "format", None)],
    "v2": [("getNewStudiesInPatientCollection", "Date", "2001/12/31"),
           ("oauth/token", "username", "nbia_guest")],
    "legacy": [("NewPatientsInCollection", "Date", "2000-01-31"),
               ("PatientsByModality", "format", "json"), ("ContentsByName", "name", SAMPLE_CART),
               ("getImageWithMD5Hash", "format", None)],
}


def test_requests_are_in_the_servers_dialect(both, flavoured, server, tmp_path):
    theirs, _ = both
    for query in ("new_patients", "new_studies", "updated_series", "patients_by_modality",
                  "shared_cart", "series_metadata"):
        QUERIES[query](theirs, flavoured)
    theirs.download(uids(flavoured, n=1), tmp_path / "one", progress=False)
    seen = flavoured.requests
    assert all(r.status in (200, None) for r in seen), [(r.endpoint, r.status) for r in seen]
    for endpoint, parameter, value in DIALECT[flavoured.flavour]:
        asked = [r.params for r in seen if r.endpoint == endpoint]
        assert asked, f"{endpoint} never asked"
        assert all(p.get(parameter) == value for p in asked), (endpoint, asked)


def test_the_v4_cart_lives_under_v1(server, tmp_cache):
    with TCIAClient(cache_dir=tmp_cache, **client_options(server)) as client:
        frame = client.shared_cart(SAMPLE_CART)
    assert sorted(frame["SeriesInstanceUID"]) == sorted(server.carts[SAMPLE_CART])
    assert list(frame.columns) == SCHEMAS["getSeries"].names
    assert frame["MaxSubmissionTimestamp"].notna().all()  # read from v1's TimeStamp
    assert server.count("getContentsByName", host="nlst") == 1  # NLST's carts too


# -- detection and settings ------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "name"), [
    ("https://nbia.cancerimagingarchive.net/nbia-api/services/v4/", "v4"),
    ("https://services.cancerimagingarchive.net/nbia-api/services/v1/", "v1"),
    ("https://services.cancerimagingarchive.net/nbia-api/services/v2/", "v2"),
    ("https://services.cancerimagingarchive.net/services/v4/TCIA/query/", "legacy"),
    ("http://127.0.0.1:8080/my-nbia/", "v4"),
])
def test_flavour_is_read_from_the_base_url(url, name):
    assert detect_flavour(url) == name
    assert flavour_for(url).name == name
    assert flavour_for(url, "v2").name == "v2"  # the setting wins


def test_api_version_setting_keyword_and_environment(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="api_version"):
        Settings(api_version="v3")
    monkeypatch.setenv("INTAKE_TCIA_API_VERSION", "v1")
    assert Settings.from_env().api_version == "v1"
    assert Settings.from_env(api_version="v4").api_version == "v4"
    with TCIAClient(cache_dir=tmp_path) as client:  # a v4 URL, but the setting says v1
        assert {f.name for f in client.router.nbia.flavours.values()} == {"v1"}


def test_each_host_has_its_own_flavour(tmp_path):
    with TCIAClient(api_url="https://services.cancerimagingarchive.net/nbia-api/services/v1/",
                    cache_dir=tmp_path) as client:
        assert [f.name for f in client.router.nbia.flavours.values()] == ["v1", "v4"]


def test_flavour_request_rewrites_paths_names_and_dates():
    base = "https://x.org/nbia-api/services/v4/"
    assert FLAVOURS["v4"].request(base + "getSeries", {"Collection": "A"}) == (
        base + "getSeries", {"Collection": "A"})
    assert FLAVOURS["v4"].request(base + "getContentsByName", {"name": "c"}) == (
        "https://x.org/nbia-api/services/v1/getContentsByName", {"name": "c"})
    v1 = "https://x.org/nbia-api/services/v1/"
    assert FLAVOURS["v1"].request(v1 + "getUpdatedSeries", {"fromDate": "02-03-2014"}) == (
        v1 + "getUpdatedSeries", {"fromDate": "03/02/2014"})
    assert FLAVOURS["v1"].request(v1 + "getImage", {"SeriesInstanceUID": "1.2",
                                                    "NewFileNames": "Yes", "IncludeMD5": "Yes"}
                                  ) == (v1 + "getImageWithMD5Hash", {"SeriesInstanceUID": "1.2"})
    legacy = "https://x.org/services/v4/TCIA/query/"
    assert FLAVOURS["legacy"].request(legacy + "NewStudiesInPatientCollection",
                                      {"Collection": "A", "fromDate": "12-31-2001"}) == (
        legacy + "NewStudiesInPatientCollection",
        {"Collection": "A", "Date": "2001-12-31", "format": "json"})


# -- real old answers ------------------------------------------------------------------------------


def test_real_v2_getseries_rows_read_as_v4():
    rows = json.loads((SAMPLES / "v2_getSeries_Soft-tissue-Sarcoma_first3.json").read_text())
    frame = frame_from_records(rows, FLAVOURS["v2"].schemas["getSeries"])
    assert list(frame.columns) == SCHEMAS["getSeries"].names
    first = frame.iloc[0]
    assert first["MaxSubmissionTimestamp"] == pd.Timestamp("2015-05-27 17:12:21")
    assert first["DataDescriptionURI"] == "https://doi.org/10.7937/K9/TCIA.2015.7GO2GSKS"
    assert first["SeriesDate"] == pd.Timestamp("2003-12-12")
    assert frame["FileSize"].tolist() == [25273786, 25273674, 6664860]


def test_real_v1_series_metadata_reads_as_v4():
    row = json.loads((SAMPLES / "v1_getSeriesMetaData_CBIS-DDSM_one.json").read_text())
    frame = frame_from_records([row], with_old_names(SCHEMAS)["getSeriesMetaData"])
    one = frame.iloc[0]
    assert one["SeriesInstanceUID"].startswith("1.3.6.1.4.1.9590.100.1.2.4190816")
    assert one["PatientID"] == "Calc-Test_P_00038_LEFT_CC_1"
    assert (one["ImageCount"], one["FileSize"], one["SeriesNumber"]) == (2, 14055890, 1)
    assert one["StudyDate"] == pd.Timestamp("2017-08-29")
    assert one["LicenseURI"] == "http://creativecommons.org/licenses/by/3.0/"
    assert one["StudyDesc"] == "" or pd.isna(one["StudyDesc"])
    assert frame["ImageCount"].dtype == "Int64"
    assert set(frame.columns) >= set(SCHEMAS["getSeriesMetadata"].names)


def test_java_date_style_is_parsed(server):
    with ArchiveServer(flavour="v1") as old:
        uid = uids(old, n=1)[0]
        answer = requests.get(old.api_url + "getSeriesMetaData",
                              params={"SeriesInstanceUID": uid}, timeout=10).json()[0]
    assert answer["Date Released"].endswith(" UTC " + answer["Date Released"][-4:])
    released = server.archive.series.set_index("SeriesInstanceUID").loc[uid, "DateReleased"]
    frame = frame_from_records([answer], with_old_names(SCHEMAS)["getSeriesMetaData"])
    assert frame.loc[0, "DateReleased"] == pd.to_datetime(released, format="%m-%d-%Y")


# -- shared carts in the catalog and on the command line ------------------------------------------


def test_shared_cart_as_a_catalog_query(server, tmp_cache):
    source = TCIAQuerySource("shared_cart", {"name": SAMPLE_CART}, cache_dir=str(tmp_cache),
                             **client_options(server))
    frame = source.read()
    assert sorted(frame["SeriesInstanceUID"]) == sorted(server.carts[SAMPLE_CART])
    assert TCIAQuerySource("getContentsByName", {"name": SAMPLE_CART}, cache_dir=str(tmp_cache),
                           **client_options(server)).read().equals(frame)


@pytest.fixture
def run(server, tmp_cache, capsys, monkeypatch):
    monkeypatch.setenv("INTAKE_TCIA_DATACITE_URL", server.datacite_url)

    def run(*argv):
        code = main([*argv, "--api-url", server.api_url, "--nlst-api-url", server.nlst_api_url,
                     "--cache-dir", str(tmp_cache)])
        return (code, *capsys.readouterr())

    return run


def test_cli_series_of_a_shared_cart(run, server):
    code, out, _ = run("series", "--shared-cart", SAMPLE_CART, "--csv")
    assert code == 0
    listed = pd.read_csv(io.StringIO(out))["SeriesInstanceUID"]
    assert sorted(listed) == sorted(server.carts[SAMPLE_CART])
    code, _, err = run("series", "--shared-cart", SAMPLE_CART, "--collection", CT)
    assert code == 2 and "not both" in err


def test_cli_download_a_shared_cart(run, server, tmp_path):
    code, out, err = run("download", "--shared-cart", SAMPLE_CART, "-o", str(tmp_path), "-q")
    assert code == 0, err
    assert f"{len(server.carts[SAMPLE_CART])} series" in out
    for uid in server.carts[SAMPLE_CART]:
        assert len(list(tmp_path.glob(f"*/*/*/{uid}/*.dcm"))) == len(
            server.archive.instances(uid))
    code, _, err = run("download", "--shared-cart", "no-such-cart", "-o", str(tmp_path))
    assert code != 0 and "no-such-cart" in err


def test_the_settings_know_every_flavour_by_name():
    from intake_tcia.config import API_VERSIONS
    from intake_tcia.nbia.flavours import FLAVOURS

    assert list(API_VERSIONS) == list(FLAVOURS)

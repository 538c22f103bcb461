"""The sample archive server itself, spoken to with plain ``requests`` (not the project client)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pydicom
import pytest
import requests

from intake_tcia.testing import ArchiveServer, FaultPlan, SampleArchive, idc_series_table

NOT_GRANTED = ("The user has not been granted the access to image with given "
               "SeriesInstanceUID,{}. Please contact System Admin to resolve this issue.")


def get(server: ArchiveServer, endpoint: str, nlst: bool = False, **params: str
        ) -> requests.Response:
    base = server.nlst_api_url if nlst else server.api_url
    return requests.get(base + endpoint, params=params, timeout=10)


def series_uid(server: ArchiveServer, collection: str, modality: str | None = None) -> str:
    table = server.archive.series
    rows = table[table["Collection"] == collection]
    if modality:
        rows = rows[rows["Modality"] == modality]
    return rows.sort_values("ImageCount")["SeriesInstanceUID"].iloc[-1]


def md5_table(archive: zipfile.ZipFile) -> dict[str, str]:
    lines = archive.read("md5hashes.csv").decode().splitlines()
    assert lines[0] == "Filename,MD5Hash"
    return dict(line.split(",") for line in lines[1:])


# -- the archive ---------------------------------------------------------------------------------
def test_archive_metadata_is_derived_from_files(server: ArchiveServer) -> None:
    archive = server.archive
    table = archive.series
    assert set(table["Collection"]) >= {"Pydicom-DICOMDIR", "Pydicom-CT-Series", "NLST"}
    assert (table.loc[table["Collection"] == "NLST", "host"] == "nlst").all()
    dicomdir = table[table["Collection"] == "Pydicom-DICOMDIR"]
    assert (len(dicomdir), dicomdir["PatientID"].nunique(), dicomdir["StudyInstanceUID"].nunique()
            ) == (13, 2, 6)
    for row in table.itertuples():
        files = archive.instances(row.SeriesInstanceUID)
        assert row.ImageCount == len(files)
        assert row.FileSize == sum(path.stat().st_size for _, path in files)
        ds = pydicom.dcmread(files[0][1], stop_before_pixels=True)
        assert (ds.SeriesInstanceUID, ds.PatientID, ds.Modality) == (
            row.SeriesInstanceUID, row.PatientID, row.Modality)
        assert {sop for sop, _ in files} == {
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for _, p in files}


def test_derived_series_geometry(server: ArchiveServer) -> None:
    """Copies are uniformly spaced; CT numbers run against the position; slices differ."""
    uid = series_uid(server, "Pydicom-CT-Series", "CT")
    datasets = [pydicom.dcmread(path) for _, path in server.archive.instances(uid)]
    assert [d.InstanceNumber for d in datasets] == list(range(1, 11))
    z = [float(d.ImagePositionPatient[2]) for d in datasets]
    assert np.allclose(np.diff(z), -2.5)
    means = [float(d.pixel_array.mean()) for d in datasets]
    assert np.allclose(np.diff(means), 10)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> SampleArchive:
    """A second archive (files in its own folder) seeded with 20k IDC NLST rows."""
    archive = SampleArchive(tmp_path_factory.mktemp("archive"))
    archive.seed_series_metadata(idc_series_table("NLST", limit=20_000))
    return archive


def test_archive_is_deterministic(scratch: SampleArchive) -> None:
    assert set(SampleArchive.default().series_uids()) <= set(scratch.series_uids())


def test_synthetic_series(scratch: SampleArchive) -> None:
    uid = scratch.add_synthetic_series("Synth", "SYN-1", 3, 32, 48, seed=1)
    files = scratch.instances(uid)
    datasets = [pydicom.dcmread(path) for _, path in files]
    assert [d.Rows for d in datasets] == [32] * 3 and datasets[0].Columns == 48
    assert [float(d.ImagePositionPatient[2]) for d in datasets] == [-75.0, -73.75, -72.5]
    assert not (datasets[0].pixel_array == datasets[1].pixel_array).all()
    row = scratch.series.set_index("SeriesInstanceUID").loc[uid]
    assert (row.ImageCount, row.FileSize) == (3, sum(p.stat().st_size for _, p in files))
    assert scratch.collection("Synth").host == "main"


def test_idc_seeding(scratch: SampleArchive) -> None:
    seeded = idc_series_table("NLST", limit=50)
    assert len(seeded) == 50 and seeded["ImageCount"].dtype == "Int64"
    assert seeded["StudyDate"].dropna().str.fullmatch(r"\d\d-\d\d-\d{4}").all()
    assert seeded["DataDescriptionURI"].str.startswith("https://doi.org/10.").all()
    assert len(scratch.series_uids("nlst")) > 20_000
    assert scratch.instances(seeded["SeriesInstanceUID"].iloc[0]) == []


# -- query endpoints -----------------------------------------------------------------------------
def test_collections_per_host(server: ArchiveServer) -> None:
    assert get(server, "getCollectionValues").json() == [
        {"Collection": "Pydicom-CT-Series"}, {"Collection": "Pydicom-DICOMDIR"}]
    assert get(server, "getCollectionValues", nlst=True).json() == [{"Collection": "NLST"}]
    counts = get(server, "getCollectionValuesAndCounts").json()
    assert counts == [{"Collection": "Pydicom-CT-Series", "Count": 1, "Authorized": 1},
                      {"Collection": "Pydicom-DICOMDIR", "Count": 2, "Authorized": 1}]


@pytest.mark.parametrize("endpoint, params, key", [
    ("getModalityValues", {"Collection": "pydicom-dicomdir"}, "Modality"),
    ("getBodyPartValues", {"Collection": "PYDICOM-DICOMDIR"}, "BodyPartExamined"),
    ("getManufacturerValues", {"Collection": "Pydicom-DICOMDIR", "Modality": "ct"},
     "Manufacturer"),
])
def test_value_endpoints(server: ArchiveServer, endpoint: str, params: dict, key: str) -> None:
    rows = get(server, endpoint, **params).json()
    table = server.archive.series
    table = table[table["Collection"] == "Pydicom-DICOMDIR"]
    if "Modality" in params:
        table = table[table["Modality"] == "CT"]
    expected = {v for v in table[key] if v is not None}
    assert {r[key] for r in rows if r} == expected
    assert ({} in rows) == table[key].isna().any()  # a NULL value is a bare {} row


def test_values_and_counts(server: ArchiveServer) -> None:
    modalities = get(server, "getModalityValuesAndCounts", Collection="Pydicom-DICOMDIR").json()
    assert {r["Modality"]: r["Count"] for r in modalities} == {"CR": 1, "CT": 2, "MR": 1}
    parts = get(server, "getBodyPartValuesAndCounts", nlst=True).json()
    assert parts == [{"BodyPart": "CHEST", "Count": 2, "Authorized": 1}]
    makers = get(server, "getManufacturerValuesAndCounts", Modality="MR").json()
    assert {r["Manufacturer"] for r in makers} == {"Philips Medical Systems, Inc.", "TOSHIBA_MEC"}


def test_patients_and_studies(server: ArchiveServer) -> None:
    patients = get(server, "getPatient", Collection="pydicom-dicomdir").json()
    assert [p["PatientId"] for p in patients] == ["77654033", "98890234"]
    assert "PatientSex" not in patients[0] and patients[1]["PatientSex"] == "M"  # null dropped
    assert get(server, "getPatient", PatientId="pyct-001").json()[0]["PatientId"] == "PYCT-001"
    by_modality = get(server, "getPatientByCollectionAndModality", Collection="Pydicom-DICOMDIR",
                      Modality="CR").json()
    assert by_modality == [{"PatientId": "77654033", "Authorized": 1}]
    studies = get(server, "getPatientStudy", Collection="NLST", PatientID="100002",
                  nlst=True).json()
    assert sorted(s["StudyDate"] for s in studies) == ["01-02-1999", "01-04-2000"]
    assert all(s["SeriesCount"] == 1 and s["PatientID"] == "100002" for s in studies)
    study = studies[0]["StudyInstanceUID"]
    one = get(server, "getPatientStudy", StudyInstanceUID=study, nlst=True).json()
    assert [s["StudyInstanceUID"] for s in one] == [study]
    assert get(server, "getPatientStudy", StudyInstanceUID=study.lower() + "9").content == b""


def test_get_series_filters(server: ArchiveServer) -> None:
    rows = get(server, "getSeries", Collection="pydicom-dicomdir", Modality="mr",
               PatientID="98890234").json()
    assert len(rows) == 7 and {r["Modality"] for r in rows} == {"MR"}
    assert all(isinstance(r["ImageCount"], int) and isinstance(r["FileSize"], int) for r in rows)
    assert all("BodyPartExamined" not in r and "AnnotationsFlag" not in r for r in rows)
    uid = series_uid(server, "Pydicom-CT-Series", "CT")
    (row,) = get(server, "getSeries", SeriesInstanceUID=uid).json()
    assert row["SeriesDate"] == "01-19-2004" and row["BodyPartExamined"] == "CHEST"
    assert row["DataDescriptionURI"] == "https://doi.org/10.7937/TCIA.SAMPLE-CTSERIES"
    assert get(server, "getSeries", SeriesInstanceUID=uid.replace("1.2", "1.3", 1)).content == b""
    assert len(get(server, "getSeries", Manufacturer="ge medical systems",
                   ManufacturerModelName="rhapsode").json()) == 1
    assert get(server, "getSeries", Collection="NLST").content == b""  # wrong host: no rows


def test_dates_and_updates(server: ArchiveServer) -> None:
    updated = get(server, "getUpdatedSeries", fromDate="03-15-2019").json()
    assert {r["Collection"] for r in updated} == {"Pydicom-CT-Series"}  # strictly after
    assert get(server, "getUpdatedSeries", fromDate="01-01-2030").content == b""
    new = get(server, "NewPatientsInCollection", Collection="Pydicom-DICOMDIR",
              fromDate="03-15-2019").json()
    assert len(new) == 2  # on or after
    studies = get(server, "NewStudiesInPatientCollection", Collection="NLST", PatientID="100003",
                  fromDate="01-01-2020", nlst=True).json()
    assert len(studies) == 1 and studies[0]["SeriesCount"] == 3
    bad = get(server, "getUpdatedSeries", fromDate="2020-01-01")
    assert bad.status_code == 400 and "MM-DD-YYYY" in bad.text


def test_series_size_and_sop_uids(server: ArchiveServer) -> None:
    uid = series_uid(server, "NLST", "CT")
    files = server.archive.instances(uid)
    size = get(server, "getSeriesSize", SeriesInstanceUID=uid, nlst=True).json()
    assert size == [{"TotalSizeInBytes": sum(p.stat().st_size for _, p in files),
                     "ObjectCount": len(files)}]
    sops = get(server, "getSOPInstanceUIDs", SeriesInstanceUID=uid, nlst=True).json()
    assert [r["SOPInstanceUID"] for r in sops] == [sop for sop, _ in files]
    assert get(server, "getSeriesSize", SeriesInstanceUID=uid).content == b""  # main host


def test_series_metadata_post(server: ArchiveServer) -> None:
    uids = server.archive.series_uids("Pydicom-DICOMDIR")[:3]
    for spelling in ("getSeriesMetadata", "getSeriesMetaData"):
        response = requests.post(server.api_url + spelling, data={"list": ",".join(uids)},
                                 timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Disposition"] == (
            'attachment; filename="SeriesMetaData.csv"')
        frame = pd.read_csv(io.StringIO(response.text), dtype=str)
        assert sorted(frame["SeriesInstanceUID"]) == sorted(uids)
        assert response.text.startswith('"PatientID","PatientName"')
        assert "PixelSpacing(mm)-Row" in frame.columns
    missing = requests.post(server.api_url + "getSeriesMetadata", data={}, timeout=10)
    assert missing.status_code == 400 and "list" in missing.text
    assert requests.get(server.api_url + "getSeriesMetadata", timeout=10).status_code == 405


def test_dicom_tags_and_descriptions(server: ArchiveServer) -> None:
    uid = series_uid(server, "Pydicom-CT-Series", "CT")
    tags = {t["element"]: t for t in get(server, "getDicomTags", SeriesUID=uid).json()}
    assert tags["(0008,0060)"]["data"] == "CT" and tags["(0028,0010)"]["data"] == "128"
    assert tags["(0008,0008)"]["data"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert get(server, "getDicomTags", SeriesUID=uid, nlst=True).status_code == 400
    described = get(server, "getCollectionDescriptions", collectionName="nlst", nlst=True).json()
    assert described[0]["collectionName"] == "NLST"
    assert described[0]["descriptionURI"] == "https://doi.org/10.7937/TCIA.HMQ8-J677"


def test_csv_and_other_formats(server: ArchiveServer) -> None:
    single = get(server, "getCollectionValues", format="CSV")
    assert single.text == "Collection\nPydicom-CT-Series\nPydicom-DICOMDIR\n"
    multi = get(server, "getPatient", Collection="Pydicom-CT-Series", format="csv").text
    assert multi.splitlines()[0].startswith('"PatientId","PatientName"')
    assert multi.splitlines()[1].startswith('"PYCT-001"')
    assert get(server, "getCollectionValues", format="xml").text.endswith("</Results>")
    assert "<TABLE" in get(server, "getCollectionValues", format="html").text
    bad = get(server, "getCollectionValues", format="yaml")
    assert bad.status_code == 500


def test_empty_answer_is_an_empty_body(server: ArchiveServer) -> None:
    response = get(server, "getSeries", Collection="No-Such-Collection")
    assert (response.status_code, response.content) == (200, b"")
    assert get(server, "getPatient", Collection="nope", format="csv").content == b""


def test_parameter_errors(server: ArchiveServer) -> None:
    unknown = get(server, "getPatientStudy", Colection="x")
    assert unknown.status_code == 400
    assert unknown.headers["Content-Type"] == "application/json"
    assert unknown.text == ("Invalid query parameter: 'Colection'. Allowed parameters are: "
                            "[Collection, PatientID, StudyInstanceUID, format]")
    missing = get(server, "getSeriesSize")
    assert (missing.status_code, missing.text) == (
        400, "A parameter, SeriesInstanceUID, is required for this API call.")
    both = get(server, "getPatientByCollectionAndModality")
    assert both.text == "A parameter, Collection and Modality, are required for this API call."
    assert get(server, "noSuchEndpoint").status_code == 404


# -- image endpoints -----------------------------------------------------------------------------
def test_get_image_zip_layouts(server: ArchiveServer) -> None:
    uid = series_uid(server, "Pydicom-DICOMDIR", "CT")
    files = server.archive.instances(uid)
    plain = get(server, "getImage", SeriesInstanceUID=uid)
    assert plain.headers["Content-Type"] == "application/octet-stream"
    assert plain.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in plain.headers
    assert plain.headers["Content-Disposition"] == f'attachment; filename="{uid}.zip"'
    names = zipfile.ZipFile(io.BytesIO(plain.content)).namelist()
    assert names == ["LICENSE"] + [f"{i:08d}.dcm" for i in range(1, len(files) + 1)]

    response = get(server, "getImage", SeriesInstanceUID=uid, NewFileNames="Yes",
                   IncludeMD5="Yes")
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    new_names = server.archive.new_file_names(uid)  # AcquisitionNumber-InstanceIndex
    assert archive.namelist() == ["LICENSE", *new_names, "md5hashes.csv"]
    assert all(re.fullmatch(r"\d-\d\.dcm", n) for n in new_names) and len(set(new_names)) == 5
    assert archive.infolist()[1].compress_type == zipfile.ZIP_DEFLATED
    assert "Creative Commons Attribution 4.0" in archive.read("LICENSE").decode()
    hashes = md5_table(archive)
    assert list(hashes) == archive.namelist()[1:-1]
    for (sop, path), name in zip(files, archive.namelist()[1:-1], strict=True):
        data = archive.read(name)
        assert data == path.read_bytes() and hashlib.md5(data).hexdigest() == hashes[name]
        assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == sop

    md5 = zipfile.ZipFile(io.BytesIO(get(server, "getImageWithMD5Hash",
                                         SeriesInstanceUID=uid).content))
    assert md5.namelist() == [f"{i:08d}.dcm" for i in range(1, len(files) + 1)] + [
        "md5hashes.csv"]
    assert all(hashlib.md5(md5.read(n)).hexdigest() == h for n, h in md5_table(md5).items())


def test_new_file_names_padding(server: ArchiveServer) -> None:
    uid = series_uid(server, "Pydicom-CT-Series", "CT")  # 10 slices
    names = zipfile.ZipFile(io.BytesIO(get(server, "getImage", SeriesInstanceUID=uid,
                                           NewFileNames="Yes").content)).namelist()
    assert names == ["LICENSE"] + [f"1-{i:02d}.dcm" for i in range(1, 11)]


def test_image_endpoints_on_the_wrong_host(server: ArchiveServer) -> None:
    uid = series_uid(server, "NLST", "CT")
    for endpoint in ("getImage", "getImageWithMD5Hash"):
        response = get(server, endpoint, SeriesInstanceUID=uid)
        assert (response.status_code, response.text) == (400, NOT_GRANTED.format(uid))
    assert get(server, "getImage", SeriesInstanceUID=uid, nlst=True).status_code == 200
    assert get(server, "getImage").text == (
        "A parameter, SeriesInstanceUID, is required for this API call.")
    assert get(server, "getImage", SeriesInstanceUID=uid, Foo="1").text == (
        "Invalid query parameter: 'Foo'. Allowed parameters are: "
        "[SeriesInstanceUID, NewFileNames, IncludeMD5]")


def test_get_single_image(server: ArchiveServer) -> None:
    uid = series_uid(server, "NLST", "MR")
    sop, path = server.archive.instances(uid)[1]
    response = get(server, "getSingleImage", SeriesInstanceUID=uid, SOPInstanceUID=sop,
                   nlst=True)
    assert response.headers["Content-Type"] == "application/dicom"
    assert response.content == path.read_bytes()
    assert get(server, "getSingleImage", SeriesInstanceUID=uid, SOPInstanceUID="1.2",
               nlst=True).status_code == 400


def test_compressed_transfer_syntaxes_in_nlst(server: ArchiveServer) -> None:
    syntaxes = set()
    for uid in server.archive.series_uids("NLST"):
        _, path = server.archive.instances(uid)[0]
        syntaxes.add(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert sum(uid.is_compressed for uid in syntaxes) >= 3


# -- request log, DataCite -----------------------------------------------------------------------
def test_request_log(server: ArchiveServer) -> None:
    get(server, "getSeries", Collection="NLST", nlst=True)
    get(server, "getCollectionValues")
    assert server.count() == 2 and server.count("getSeries", host="nlst") == 1
    record = server.requests[0]
    assert (record.method, record.endpoint, record.params, record.status) == (
        "GET", "getSeries", {"Collection": "NLST"}, 200)
    assert record.bytes_sent > 0
    server.clear_log()
    assert server.count() == 0


def test_datacite(server: ArchiveServer) -> None:
    response = requests.get(server.datacite_url + "dois/10.7937/TCIA.SAMPLE-DICOMDIR", timeout=10)
    data = response.json()["data"]
    assert data["id"] == "10.7937/tcia.sample-dicomdir"
    attributes = data["attributes"]
    assert attributes["titles"][0]["title"] == "Pydicom DICOMDIR test studies"
    assert attributes["creators"][0] == {"name": "Mason, Darcy", "nameType": "Personal",
                                         "givenName": "Darcy", "familyName": "Mason"}
    assert attributes["rightsList"][0]["rightsUri"] == "https://creativecommons.org/licenses/by/4.0/"
    assert {"publicationYear", "publisher", "url", "version"} <= set(attributes)
    assert requests.get(server.datacite_url + "dois/10.1/none", timeout=10).status_code == 404
    assert server.count(host="datacite") == 2


# -- faults --------------------------------------------------------------------------------------
def test_status_fault_with_retry_after(server: ArchiveServer) -> None:
    server.faults.add("status", endpoint="getSeries", code=429, retry_after=2, times=2)
    for _ in range(2):
        response = get(server, "getSeries")
        assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    assert get(server, "getSeries").status_code == 200
    assert get(server, "getCollectionValues").status_code == 200


def test_fault_matching_by_series_and_host(server: ArchiveServer) -> None:
    uid = series_uid(server, "NLST", "CT")
    server.faults.add("status", series=uid, code=500, text="boom")
    assert get(server, "getSeriesSize", SeriesInstanceUID="1.2.3").status_code == 200
    response = get(server, "getSeriesSize", SeriesInstanceUID=uid, nlst=True)
    assert (response.status_code, response.text) == (500, "boom")
    server.faults.add("status", host="nlst", code=503)
    assert get(server, "getCollectionValues").status_code == 200
    assert get(server, "getCollectionValues", nlst=True).status_code == 503


def test_html_and_invalid_json_faults(server: ArchiveServer) -> None:
    server.faults.add("html")
    response = get(server, "getSeries")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    server.faults.add("invalid_json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(get(server, "getSeries").text)


def test_reset_fault(server: ArchiveServer) -> None:
    uid = series_uid(server, "Pydicom-CT-Series", "CT")
    server.faults.add("reset", endpoint="getImage", after_bytes=5000)
    with pytest.raises(requests.exceptions.RequestException):
        get(server, "getImage", SeriesInstanceUID=uid).content  # noqa: B018
    assert server.requests[-1].bytes_sent == 5000
    server.faults.add("reset", endpoint="getSeries")
    with pytest.raises(requests.exceptions.RequestException):
        get(server, "getSeries").json()
    assert get(server, "getSeries").status_code == 200  # one-shot


@pytest.mark.parametrize("collection", ["Pydicom-CT-Series", "Pydicom-DICOMDIR"])
def test_truncate_fault(server: ArchiveServer, collection: str) -> None:
    uid = series_uid(server, collection, "CT")  # DICOMDIR's tiny CTs deflate to a small zip
    server.faults.add("truncate", endpoint="getImage")
    response = get(server, "getImage", SeriesInstanceUID=uid)  # HTTP-complete
    assert response.status_code == 200
    assert 0 < len(response.content) <= 1024
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(response.content))


def test_wrong_md5_fault(server: ArchiveServer) -> None:
    uid = series_uid(server, "Pydicom-DICOMDIR", "CT")
    server.faults.add("wrong_md5", series=uid, file=1)
    archive = zipfile.ZipFile(io.BytesIO(get(server, "getImageWithMD5Hash",
                                             SeriesInstanceUID=uid).content))
    wrong = [n for n, h in md5_table(archive).items()
             if hashlib.md5(archive.read(n)).hexdigest() != h]
    assert wrong == ["00000002.dcm"]


@pytest.mark.parametrize("kind, check", [
    ("absolute_path", lambda z: any(n.startswith("/") for n in z.namelist())),
    ("dotdot", lambda z: any(n.startswith("../") for n in z.namelist())),
    ("symlink", lambda z: any((i.external_attr >> 16) & 0o170000 == 0o120000
                              for i in z.infolist())),
    ("duplicate", lambda z: len(z.namelist()) != len(set(z.namelist()))),
    ("bomb", lambda z: sum(i.file_size for i in z.infolist()) > 100 * sum(
        i.compress_size for i in z.infolist())),
])
def test_hostile_zip_faults(server: ArchiveServer, kind: str, check) -> None:
    uid = series_uid(server, "Pydicom-DICOMDIR", "CR")
    params = {"size": 32 << 20} if kind == "bomb" else {}
    server.faults.add(kind, **params)
    get(server, "getSeries")  # zip kinds leave query endpoints alone
    archive = zipfile.ZipFile(io.BytesIO(get(server, "getImage", SeriesInstanceUID=uid,
                                             IncludeMD5="Yes").content))
    assert check(archive)
    assert archive.namelist()[-1] == "md5hashes.csv"
    assert not server.faults.pending


def test_hang_and_endless_faults(server: ArchiveServer) -> None:
    server.faults.add("hang", seconds=2)
    start = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(server.api_url + "getSeries", timeout=0.3)
    assert time.monotonic() - start < 1
    server.faults.add("endless", endpoint="getSeries", seconds=1)
    with requests.get(server.api_url + "getSeries", stream=True, timeout=5) as response:
        received = 0
        with pytest.raises(requests.exceptions.RequestException):
            for block in response.iter_content(65536):
                received += len(block)
    assert received > 1 << 20


def test_random_faults_are_reproducible(server: ArchiveServer) -> None:
    def run() -> list[int]:
        server.faults.random(0.5, kinds=("status",), seed=7, endpoint="getPatient")
        codes = [get(server, "getPatient").status_code for _ in range(12)]
        assert get(server, "getSeries").status_code == 200  # other endpoints untouched
        return codes

    first, second = run(), run()
    assert first == second
    assert 200 in first and set(first) - {200} <= {429, 500, 502, 503, 504} and len(set(first)) > 1
    with pytest.raises(ValueError):
        FaultPlan().random(2.0)
    with pytest.raises(ValueError):
        FaultPlan().add("meteor")


def test_latency_and_bandwidth(server: ArchiveServer) -> None:
    server.faults.latency = 0.2
    start = time.monotonic()
    get(server, "getCollectionValues")
    assert time.monotonic() - start >= 0.2
    server.faults.latency = 0
    uid = series_uid(server, "Pydicom-CT-Series", "CT")
    server.faults.bandwidth = 400_000
    start = time.monotonic()
    size = len(get(server, "getImage", SeriesInstanceUID=uid).content)
    assert time.monotonic() - start >= 0.8 * size / 400_000
    server.reset()
    assert server.faults.bandwidth is None and server.count() == 0


def test_keep_alive_connection_reused(server: ArchiveServer) -> None:
    with requests.Session() as session:
        for _ in range(3):
            session.get(server.api_url + "getCollectionValues", timeout=5).raise_for_status()
            uid = series_uid(server, "Pydicom-DICOMDIR", "CT")
            session.get(server.api_url + "getImage", params={"SeriesInstanceUID": uid},
                        timeout=5).raise_for_status()
        assert len(session.get_adapter(server.api_url).poolmanager.pools) == 1


# -- scale ---------------------------------------------------------------------------------------
def test_stored_zip_streams_fast(scratch: SampleArchive) -> None:
    uid = scratch.add_synthetic_series("Bench", "B-1", 40, 512, 512)  # ~21 MB
    with ArchiveServer(scratch, compression="stored") as fast:
        start = time.monotonic()
        with requests.get(fast.api_url + "getImage", params={"SeriesInstanceUID": uid},
                          stream=True, timeout=30) as response:
            size = sum(len(b) for b in response.iter_content(1 << 20))
        elapsed = time.monotonic() - start
    assert size > 20e6
    assert size / elapsed > 50e6  # loopback, stored: typically several hundred MB/s


def test_seeded_get_series(scratch: SampleArchive) -> None:
    with ArchiveServer(scratch) as big:
        rows = requests.get(big.nlst_api_url + "getSeries", params={"Collection": "nlst"},
                            timeout=30).json()
        assert len(rows) == len(scratch.series_uids("NLST")) > 20_000
        last = rows[-1]
        sizes = requests.get(big.nlst_api_url + "getSeriesSize",
                             params={"SeriesInstanceUID": last["SeriesInstanceUID"]},
                             timeout=5).json()
        assert sizes == [{"TotalSizeInBytes": last["FileSize"], "ObjectCount": last["ImageCount"]}]
        seeded_image = requests.get(big.nlst_api_url + "getImage",
                                    params={"SeriesInstanceUID": last["SeriesInstanceUID"]},
                                    timeout=5)
        assert zipfile.ZipFile(io.BytesIO(seeded_image.content)).namelist() == ["LICENSE"]


def test_listeners_stop() -> None:
    server = ArchiveServer().start()
    url = server.api_url
    server.faults.add("hang", seconds=30)
    with socket.create_connection(server._listeners["main"].server_address[:2]) as sock:
        path = urlsplit(url).path + "getCollectionValues"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.1)
        start = time.monotonic()
        server.stop()
        assert time.monotonic() - start < 2
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url + "getCollectionValues", timeout=2)


def test_server_repr_and_environ_name_its_urls() -> None:
    server = ArchiveServer()
    assert repr(server) == "ArchiveServer(flavour='v4', stopped)"
    with server:
        assert repr(server) == (f"ArchiveServer(api_url={server.api_url!r}, "
                                f"nlst_api_url={server.nlst_api_url!r}, flavour='v4')")
        assert server.environ == {"INTAKE_TCIA_API_URL": server.api_url,
                                  "INTAKE_TCIA_NLST_API_URL": server.nlst_api_url,
                                  "INTAKE_TCIA_DATACITE_URL": server.datacite_url}


def test_main_prints_an_export_line_for_every_setting() -> None:
    command = [sys.executable, "-m", "intake_tcia.testing", "--quiet"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        lines = []
        try:
            for line in process.stdout:
                lines.append(line)
                if line.startswith("Ctrl-C"):
                    break
        finally:
            process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=30)[0]
    out = "".join(lines)
    for variable in ("INTAKE_TCIA_API_URL", "INTAKE_TCIA_NLST_API_URL", "INTAKE_TCIA_DATACITE_URL"):
        assert f"export {variable}=http://127.0.0.1:" in out
    assert rest.strip() == "stopped" and process.returncode == 0

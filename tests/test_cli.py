"""The intake-tcia command line, run in-process against the loopback sample archive."""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from intake_tcia.cli import main
from intake_tcia.manifest import read_manifest, write_manifest

CT_COLLECTION = "Pydicom-CT-Series"


@pytest.fixture
def run(server, tmp_cache, capsys, monkeypatch):
    """Run ``intake-tcia ARGS`` against the sample archive: (exit status, stdout, stderr)."""
    monkeypatch.setenv("INTAKE_TCIA_DATACITE_URL", server.datacite_url)  # never the real one

    def run(*argv):
        options = ["--api-url", server.api_url, "--nlst-api-url", server.nlst_api_url,
                   "--cache-dir", str(tmp_cache)]
        code = main([*argv, *options])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def archive_series(server, **where):
    table = server.archive.series
    for column, value in where.items():
        table = table[table[column] == value]
    return table


def test_collections_table_lists_every_collection_nlst_too(run, server):
    code, out, err = run("collections")
    assert code == 0, err
    listed = {line.strip() for line in out.splitlines()[1:]}
    assert listed == set(server.archive.series["Collection"])
    assert "NLST" in listed


def test_series_csv_has_every_column_and_only_the_matching_series(run, server):
    code, out, err = run("series", "--collection", CT_COLLECTION, "--modality", "ct", "--csv")
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out), dtype=str)
    expected = archive_series(server, Collection=CT_COLLECTION, Modality="CT")
    assert len(expected) > 0
    assert sorted(frame["SeriesInstanceUID"]) == sorted(expected["SeriesInstanceUID"])
    assert {"ImageCount", "LicenseName", "DataDescriptionURI", "FileSize"} <= set(frame.columns)


def test_series_json_records_with_chosen_columns(run, server):
    code, out, err = run("series", "--collection", "NLST", "--json",
                         "--columns", "SeriesInstanceUID,ImageCount")
    assert code == 0, err
    records = json.loads(out)
    expected = archive_series(server, Collection="NLST")
    assert {r["SeriesInstanceUID"]: r["ImageCount"] for r in records} == dict(
        zip(expected["SeriesInstanceUID"], expected["ImageCount"].astype(int), strict=True)
    )
    assert all(set(r) == {"SeriesInstanceUID", "ImageCount"} for r in records)


def test_series_table_shows_the_compact_columns(run, server):
    uid = archive_series(server, Collection=CT_COLLECTION)["SeriesInstanceUID"].iloc[0]
    code, out, err = run("series", "--series-uid", uid)
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["Collection", "PatientID", "Modality", "BodyPartExamined",
                              "SeriesDescription", "ImageCount", "FileSize",
                              "SeriesInstanceUID"]
    assert row.split()[-1] == uid


def test_patients_and_studies_filters(run, server):
    code, out, err = run("patients", "--collection", "NLST", "--csv")
    assert code == 0, err
    patients = pd.read_csv(io.StringIO(out), dtype=str)
    assert set(patients["PatientID"]) == set(archive_series(server, Collection="NLST")["PatientID"])

    patient = patients["PatientID"].iloc[0]
    code, out, err = run("studies", "--collection", "NLST", "--patient-id", patient, "--csv")
    assert code == 0, err
    studies = pd.read_csv(io.StringIO(out), dtype=str)
    expected = archive_series(server, Collection="NLST", PatientID=patient)
    assert set(studies["StudyInstanceUID"]) == set(expected["StudyInstanceUID"])


def test_empty_result_says_so(run):
    code, out, err = run("series", "--collection", "NLST", "--modality", "CR")
    assert (code, out.strip(), err) == (0, "(nothing found)", "")


def test_an_unknown_name_is_one_line_naming_the_closest(run):
    code, out, err = run("series", "--collection", "Pydicom-CT-Seires")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "did you mean 'Pydicom-CT-Series'" in err


def test_options_before_the_subcommand_and_environment(server, tmp_cache, capsys, monkeypatch):
    code = main(["--api-url", server.api_url, "--nlst-api-url", server.nlst_api_url,
                 "--cache-dir", str(tmp_cache), "modalities", "--collection", CT_COLLECTION])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert set(out.split()[1:]) == set(archive_series(server, Collection=CT_COLLECTION)["Modality"])

    monkeypatch.setenv("INTAKE_TCIA_API_URL", server.api_url)
    monkeypatch.setenv("INTAKE_TCIA_NLST_API_URL", server.nlst_api_url)
    server.clear_log()
    assert main(["collections", "--json"]) == 0
    assert {r["Collection"] for r in json.loads(capsys.readouterr().out)} == set(
        server.archive.series["Collection"]
    )
    assert server.count() > 0


@pytest.mark.parametrize(
    "argv",
    [
        ["series", "--series-uid", "1.2.abc"],
        ["download", "1.2.abc"],
        ["manifest", "1.2.abc", "-o", "x.tcia"],
    ],
)
def test_malformed_uid_is_one_usage_line_naming_it(run, server, argv):
    code, out, err = run(*argv)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and "1.2.abc" in err and "Traceback" not in err
    assert server.count() == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["download"], "give series UIDs"),
        (["download", "1.2.3", "--collection", "NLST"], "not both"),
        (["series", "--columns", "Nope"], "Nope"),
        (["series", "--csv", "--json"], "not allowed with"),
        ([], "required"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(run, argv, message):
    code, out, err = run(*argv)
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err


def test_server_error_is_one_line_with_status_1(run, server):
    server.faults.add("status", endpoint="getSeries", code=400)
    code, out, err = run("series", "--collection", "NLST")
    assert code == 1
    assert len(err.splitlines()) == 1
    assert "HTTP 400" in err and "Traceback" not in err


def test_download_by_uid_then_from_the_cache(run, server, tmp_path):
    uids = list(archive_series(server, Collection=CT_COLLECTION)["SeriesInstanceUID"])
    dest = tmp_path / "out"
    code, out, err = run("download", *uids, "-o", str(dest), "-q")
    assert code == 0, err
    assert f"{len(uids)} series into {dest}: {len(uids)} downloaded, 0 cached, 0 failed" in out
    dicom = list(dest.rglob("*.dcm"))
    expected = archive_series(server, Collection=CT_COLLECTION)["ImageCount"].sum()
    assert len(dicom) == expected

    server.clear_log()
    code, out, err = run("download", *uids, "-o", str(dest), "-q")
    assert code == 0, err
    assert f"0 downloaded, {len(uids)} cached, 0 failed" in out
    assert server.count("getImage") == 0


def test_manifest_from_a_query_then_download_it(run, server, tmp_path):
    path = tmp_path / "nlst.tcia"
    code, out, err = run("manifest", "--collection", "NLST", "--modality", "CT", "-o", str(path))
    assert code == 0, err
    expected = list(archive_series(server, Collection="NLST", Modality="CT")["SeriesInstanceUID"])
    assert sorted(read_manifest(path).series_uids) == sorted(expected)
    assert str(path) in out

    code, out, err = run("download", str(path), "-o", str(tmp_path / "out"), "-q")
    assert code == 0, err
    assert f"{len(expected)} downloaded" in out


def test_failed_download_is_summarised_with_status_1(run, server, tmp_path):
    uids = list(archive_series(server, Collection="NLST")["SeriesInstanceUID"])
    bad = uids[0]
    server.faults.add("status", endpoint="getImage", series=bad, code=404)
    manifest = write_manifest(uids, tmp_path / "all.tcia")
    code, out, err = run("download", str(manifest), "-o", str(tmp_path / "out"), "-q")
    assert code == 1
    assert f"{len(uids) - 1} downloaded, 0 cached, 1 failed" in out
    failures = err.splitlines()
    assert len(failures) == 1 and bad in failures[0]


def test_cite_a_query_formatted_for_a_paper(run, server):
    code, out, err = run("cite", "--collection", CT_COLLECTION,
                         "--datacite-url", server.datacite_url)
    assert code == 0, err
    info = server.archive.collection(CT_COLLECTION)
    assert f"https://doi.org/{info.doi}" in out
    assert info.title in out  # from DataCite
    assert f"{info.license_name} <{info.license_uri}>: {CT_COLLECTION}" in out
    assert server.count(host="datacite") > 0


def test_cite_uids_as_json(run, server):
    uids = [archive_series(server, Collection=c)["SeriesInstanceUID"].iloc[0]
            for c in ("NLST", CT_COLLECTION)]
    code, out, err = run("cite", *uids, "--json")
    assert code == 0, err
    cited = {r["Collection"]: r for r in json.loads(out)}
    assert set(cited) == {"NLST", CT_COLLECTION}
    for name, row in cited.items():
        info = server.archive.collection(name)
        assert (row["DOI"], row["LicenseURI"], row["Title"]) == (
            info.doi, info.license_uri, info.title)


def test_cite_an_unknown_series_names_it(run):
    code, out, err = run("cite", "1.2.3.4.5")
    assert code == 1 and len(err.splitlines()) == 1 and "1.2.3.4.5" in err


def test_demo_runs_offline_and_writes_a_png(tmp_path):
    pil_image = pytest.importorskip("PIL.Image")
    png = tmp_path / "slice.png"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_TCIA_")}
    env["INTAKE_TCIA_API_URL"] = "http://127.0.0.1:9/unused/"  # the demo must not read it
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "intake_tcia.cli", "demo", "-o", str(png)],
                          capture_output=True, text=True, env=env, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - started < 30
    assert str(png) in done.stdout
    with pil_image.open(png) as image:
        image.verify()
    with pil_image.open(png) as image:
        assert image.format == "PNG" and image.mode == "L"
        assert image.size == (128, 128)
        assert len(np.unique(np.asarray(image))) > 10  # a picture, not a blank


def test_missing_manifest_is_one_line_naming_it(run, tmp_path):
    missing = tmp_path / "missing.tcia"
    code, out, err = run("download", str(missing), "-o", str(tmp_path))
    assert code == 1
    assert err == f"intake-tcia download: error: {missing}: No such file or directory\n"


def test_demo_keeps_the_cache_it_is_given(tmp_path, capsys):
    from intake_tcia.retrieval.cache import SeriesCache

    cache = tmp_path / "cache"
    code = main(["demo", "-o", str(tmp_path / "demo.png"), "--cache-dir", str(cache)])
    out, err = capsys.readouterr()
    assert code == 0, err
    uid = out.split("-> series ")[1].split()[0]
    cached = SeriesCache(cache).get(uid)
    assert cached is not None and len(cached.files) == 10
    assert "(temporary)" not in out


def test_demo_removes_its_temporary_cache(tmp_path):
    from intake_tcia.demo import run_demo

    lines = []
    run_demo(output=tmp_path / "demo.png", echo=lines.append)
    cache_line = next(line for line in lines if line.startswith("Series are cached in "))
    folder = cache_line.removeprefix("Series are cached in ").removesuffix(" (temporary).")
    assert not os.path.exists(folder)
    assert (tmp_path / "demo.png").stat().st_size > 0


def test_demo_tours_another_archive_given_a_collection(run, server, tmp_path):
    code, out, err = run("demo")  # run() passes --api-url
    assert code == 2 and "--collection" in err and len(err.splitlines()) == 1

    code, out, err = run("demo", "--collection", CT_COLLECTION, "-o", str(tmp_path / "d.png"))
    assert code == 0, err
    assert "sample archive is serving" not in out
    assert server.count("getImage") == 1 and (tmp_path / "d.png").exists()


def test_verify_rehashes_the_cache_and_removes_a_damaged_series(run, server, tmp_cache, tmp_path):
    uids = list(archive_series(server, Collection=CT_COLLECTION)["SeriesInstanceUID"])[:2]
    assert run("download", *uids, "-o", str(tmp_path / "out"), "-q")[0] == 0
    code, out, err = run("verify")
    assert (code, err) == (0, "") and "2 of 2 series verified" in out
    from intake_tcia.retrieval.cache import SeriesCache

    victim = SeriesCache(tmp_cache).get(uids[1]).files[0]
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as before
    code, out, err = run("verify", *uids)
    assert code == 1 and "1 of 2 series verified" in out
    assert err.strip() == f"intake-tcia verify: damaged, removed from the cache: {uids[1]}"
    assert uids[1] not in SeriesCache(tmp_cache) and uids[0] in SeriesCache(tmp_cache)

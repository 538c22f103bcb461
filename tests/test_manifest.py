"""Tests of intake_tcia.manifest: the .tcia files of the NBIA Data Retriever."""

from __future__ import annotations

import io
import re
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intake_tcia.manifest import (
    DEFAULT_DOWNLOAD_SERVER_URL,
    NLST_DOWNLOAD_SERVER_URL,
    Manifest,
    as_series_uids,
    read_manifest,
    write_manifest,
)

# a real manifest from the TCIA portal (kirbyju/TCIA_data_retriever, test_manifests/)
SAMPLE = Path(__file__).parent / "data" / "manifest_nbia-cmb-aml-test.tcia"

UID_A = "1.3.6.1.4.1.14519.5.2.1.200342509692530171737702339931600829926"
UID_B = "1.3.6.1.4.1.14519.5.2.1.188509228399418227963222544411901339575"
HEADER = [
    "downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet",
    "includeAnnotation=true",
    "noOfrRetry=4",
]


def manifest_bytes(*lines: str, newline: str = "\n", ending: str = "\n") -> bytes:
    return (newline.join(lines) + ending).encode("ascii")


# --- the real sample -------------------------------------------------------------------------


def test_sample_is_read():
    m = read_manifest(SAMPLE)
    assert list(m.properties) == [
        "downloadServerUrl", "includeAnnotation", "noOfrRetry", "databasketId", "manifestVersion",
    ]
    assert m.download_server_url == DEFAULT_DOWNLOAD_SERVER_URL
    assert m.include_annotation is True
    assert m.retries == 4
    assert m.databasket_id == "manifest-1746549740123.tcia"
    assert m.properties["manifestVersion"] == "3.0"
    assert len(m.series_uids) == 14
    assert m.series_uids[0] == UID_A
    assert m.series_uids[-1] == "1.3.6.1.4.1.14519.5.2.1.232335242510145179460781332726949388774"


def test_sample_round_trips_byte_for_byte(tmp_path):
    original = SAMPLE.read_bytes()
    assert original.endswith(b"\n\n") and b"\r" not in original  # LF, then a final blank line
    out = write_manifest(read_manifest(SAMPLE), tmp_path / "copy.tcia")
    assert out == tmp_path / "copy.tcia"
    assert out.read_bytes() == original


@pytest.mark.parametrize("mode", ["rb", "r"])
def test_read_from_open_files(mode):
    with open(SAMPLE, mode, **({} if mode == "rb" else {"newline": ""})) as f:
        m = read_manifest(f)
    assert m.to_text().encode("ascii") == SAMPLE.read_bytes()


def test_crlf_and_missing_final_newline_round_trip(tmp_path):
    data = manifest_bytes(*HEADER, "ListOfSeriesToDownload=", UID_A, UID_B,
                          newline="\r\n", ending="")
    m = read_manifest(io.BytesIO(data))
    assert (m.newline, m.ending, m.series_uids) == ("\r\n", "", [UID_A, UID_B])
    assert write_manifest(m, tmp_path / "m.tcia").read_bytes() == data


# --- what java.util.Properties allows in the header ------------------------------------------


def test_properties_syntax_is_understood():
    data = manifest_bytes(
        "# written by hand",
        "! another comment",
        "",
        "   downloadServerUrl = http://127.0.0.1:8080/nbia-download/servlet/DownloadServlet",
        "includeAnnotation:false",
        "noOfrRetry 7",
        "databasketId=my\\ basket\\u00e9\\",
        "    -part2.tcia",
        "a\\=key=with\\\\backslash\\t",
        "ListOfSeriesToDownload=",
        "",
        "  " + UID_A + "  ",
        "# a comment among the UIDs",
        UID_B,
    )
    m = read_manifest(io.BytesIO(data))
    assert m.properties == {
        "downloadServerUrl": "http://127.0.0.1:8080/nbia-download/servlet/DownloadServlet",
        "includeAnnotation": "false",
        "noOfrRetry": "7",
        "databasketId": "my basket\u00e9-part2.tcia",
        "a=key": "with\\backslash\t",
    }
    assert m.include_annotation is False
    assert m.retries == 7
    assert m.series_uids == [UID_A, UID_B]


def test_header_is_escaped_as_java_reads_it():
    m = Manifest([UID_A], {"a b:c": " lead\\trail ", "k": "\u00e9\U0001f600\n"})
    assert m.to_text() == (
        "a\\ b\\:c=\\ lead\\\\trail \n"
        "k=\\u00E9\\uD83D\\uDE00\\n\n"
        f"ListOfSeriesToDownload=\n{UID_A}\n"
    )


def test_uid_on_the_list_line_and_duplicates_are_kept():
    m = read_manifest(io.BytesIO(manifest_bytes(f"ListOfSeriesToDownload={UID_A}", UID_A)))
    assert m.series_uids == [UID_A, UID_A]
    assert m.properties == {}


def test_utf8_bom_is_ignored():
    data = b"\xef\xbb\xbf" + manifest_bytes("ListOfSeriesToDownload=", UID_A)
    m = read_manifest(io.BytesIO(data))
    assert m.series_uids == [UID_A]


# --- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["1..2", "1.2.3a", "1.2.3.4=5", "x" * 3, "1." + "1" * 63]
)
def test_malformed_uid_names_line_and_value(tmp_path, bad):
    path = tmp_path / "bad.tcia"
    path.write_bytes(manifest_bytes(*HEADER, "ListOfSeriesToDownload=", UID_A, "", bad, UID_B))
    with pytest.raises(ValueError, match=rf"bad\.tcia, line 7: .*{re.escape(repr(bad))}"):
        read_manifest(path)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\n\n",
        b"SeriesInstanceUID,Collection\n1.2.3,LIDC-IDRI\n",  # a CSV
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xff\xfe\x00binary",  # a zip
        manifest_bytes(UID_A, UID_B),  # a bare list of UIDs
        manifest_bytes(*HEADER),  # a header without the list
    ],
)
def test_not_a_manifest(tmp_path, data):
    path = tmp_path / "x.tcia"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"x\.tcia is not a \.tcia manifest.*ListOfSeries"):
        read_manifest(path)


def test_malformed_escape_names_the_line():
    lines = ("includeAnnotation=true", "databasketId=\\u12G4", "ListOfSeriesToDownload=")
    data = manifest_bytes(*lines)
    with pytest.raises(ValueError, match=r"line 2: malformed \\uXXXX"):
        read_manifest(io.BytesIO(data))


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        read_manifest("/nonexistent/manifest.tcia")


# --- writing ---------------------------------------------------------------------------------


def test_write_from_list_is_what_nbia_writes(tmp_path):
    out = write_manifest([UID_A, UID_B], tmp_path / "m.tcia", databasket_id="manifest-1.tcia")
    assert out.read_bytes() == manifest_bytes(
        *HEADER, "databasketId=manifest-1.tcia", "manifestVersion=3.0",
        "ListOfSeriesToDownload=", UID_A, UID_B,
    )


def test_default_databasket_id_is_nbia_style(tmp_path):
    before = time.time() * 1000
    m = read_manifest(write_manifest(UID_A, tmp_path / "m.tcia"))
    after = time.time() * 1000
    match = re.fullmatch(r"manifest-(\d{13})\.tcia", m.databasket_id)
    assert match and before - 1 <= int(match.group(1)) <= after + 1
    assert m.series_uids == [UID_A]


def test_write_options(tmp_path):
    out = write_manifest(
        [UID_A], tmp_path / "m.tcia", download_server_url="http://127.0.0.1:1/x",
        include_annotation=False, retries=0, databasket_id="basket.tcia",
    )
    m = read_manifest(out)
    assert m.properties == {
        "downloadServerUrl": "http://127.0.0.1:1/x", "includeAnnotation": "false",
        "noOfrRetry": "0", "databasketId": "basket.tcia", "manifestVersion": "3.0",
    }


def test_write_manifest_object_with_override_keeps_the_rest(tmp_path):
    m = read_manifest(SAMPLE)
    out = write_manifest(m, tmp_path / "m.tcia", retries=9)
    assert out.read_bytes() == SAMPLE.read_bytes().replace(b"noOfrRetry=4", b"noOfrRetry=9")
    assert m.retries == 4  # the original is not changed


def test_write_from_dataframe_drops_duplicates(tmp_path):
    df = pd.DataFrame({"SeriesInstanceUID": [UID_B, UID_A, UID_B], "Modality": ["CT"] * 3})
    m = read_manifest(write_manifest(df, tmp_path / "m.tcia"))
    assert m.series_uids == [UID_B, UID_A]
    assert m.download_server_url == DEFAULT_DOWNLOAD_SERVER_URL


def test_nlst_dataframe_gets_the_nlst_server(tmp_path):
    df = pd.DataFrame({"SeriesInstanceUID": [UID_A], "Collection": ["nlst"]})
    assert read_manifest(write_manifest(df, tmp_path / "m.tcia")).download_server_url == (
        NLST_DOWNLOAD_SERVER_URL
    )
    mixed = pd.DataFrame({"SeriesInstanceUID": [UID_A, UID_B], "Collection": ["NLST", "LIDC"]})
    with pytest.raises(ValueError, match="NLST"):
        write_manifest(mixed, tmp_path / "mixed.tcia")
    assert not (tmp_path / "mixed.tcia").exists()
    chosen = write_manifest(mixed, tmp_path / "chosen.tcia", download_server_url="http://x/y")
    assert read_manifest(chosen).download_server_url == "http://x/y"


def test_write_into_directory_uses_databasket_id(tmp_path):
    out = write_manifest([UID_A], tmp_path, databasket_id="manifest-42.tcia")
    assert out == tmp_path / "manifest-42.tcia"
    assert read_manifest(out).series_uids == [UID_A]


@pytest.mark.parametrize(
    ("series", "error", "match"),
    [
        ([], ValueError, "no series"),
        ([UID_A, "1.2.3.x"], ValueError, r"item 1.*'1\.2\.3\.x'"),
        ([UID_A, None], TypeError, r"item 1.*NoneType"),
        (pd.DataFrame({"SeriesUID": [UID_A]}), ValueError, "no SeriesInstanceUID column"),
        (pd.DataFrame({"SeriesInstanceUID": [UID_A, float("nan")]}), TypeError, "float"),
        (42, TypeError, "not int"),
    ],
)
def test_write_rejects_bad_series(tmp_path, series, error, match):
    with pytest.raises(error, match=match):
        write_manifest(series, tmp_path / "m.tcia")
    assert not (tmp_path / "m.tcia").exists()


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ({"retries": -1}, ValueError),
        ({"retries": "4"}, TypeError),
        ({"retries": True}, TypeError),
        ({"include_annotation": "yes"}, TypeError),
        ({"databasket_id": 5}, TypeError),
    ],
)
def test_write_rejects_bad_options(tmp_path, option, error):
    with pytest.raises(error, match=next(iter(option))):
        write_manifest([UID_A], tmp_path / "m.tcia", **option)


def test_manifest_checks_its_fields():
    with pytest.raises(ValueError, match="ListOfSeriesToDownload"):
        Manifest([UID_A], {"ListOfSeriesToDownload": ""})
    with pytest.raises(ValueError, match="newline"):
        Manifest([UID_A], newline="\t")
    with pytest.raises(ValueError, match="ending"):
        Manifest([UID_A], ending="\n \n")


# --- as_series_uids: every way of naming series ----------------------------------------------


def test_as_series_uids(tmp_path):
    path = write_manifest([UID_A, UID_B], tmp_path / "m.tcia")
    assert as_series_uids(f"  {UID_A} ") == [UID_A]
    assert as_series_uids(path) == [UID_A, UID_B]
    assert as_series_uids(str(path)) == [UID_A, UID_B]
    assert as_series_uids(read_manifest(path)) == [UID_A, UID_B]
    assert as_series_uids(pd.Series([UID_B, UID_A, UID_B])) == [UID_B, UID_A]
    assert as_series_uids(iter([UID_A])) == [UID_A]
    frame = pd.DataFrame({"SeriesInstanceUID": [UID_A, UID_B], "Modality": ["CT", "MR"]})
    assert as_series_uids(frame.iloc[1]) == [UID_B]  # one row names its series
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        as_series_uids("LIDC-IDRI")
    with pytest.raises(ValueError, match=r"expected numbers separated by dots \(e\.g\. '1\."):
        as_series_uids("LIDC-IDRI")


# --- properties ------------------------------------------------------------------------------

uids = st.lists(st.integers(0, 10**20), min_size=1, max_size=6).map(
    lambda parts: ".".join(map(str, parts))
).filter(lambda uid: len(uid) <= 64)
keys = st.text(max_size=20).filter(lambda k: k != "ListOfSeriesToDownload")


@given(
    series_uids=st.lists(uids, max_size=20),
    properties=st.dictionaries(keys, st.text(max_size=30), max_size=6),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    ending=st.sampled_from(["", "\n", "\n\n", "\r\n"]),
)
def test_round_trip_property(series_uids, properties, newline, ending):
    manifest = Manifest(series_uids, properties, newline, ending)
    data = manifest.to_text().encode("ascii")  # anything else is escaped
    back = read_manifest(io.BytesIO(data))
    assert (back.series_uids, back.properties, back.ending) == (series_uids, properties, ending)
    assert back.to_text().encode("ascii") == data


@given(
    series_uids=st.lists(uids, min_size=1, max_size=20),
    url=st.from_regex(r"https?://[a-z0-9.:/-]{1,40}", fullmatch=True),
    include_annotation=st.booleans(),
    retries=st.integers(0, 100),
    basket=st.from_regex(r"[A-Za-z0-9_.-]{1,30}", fullmatch=True),
)
def test_written_header_is_plain_and_read_back(series_uids, url, include_annotation, retries,
                                              basket):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_manifest(
            series_uids, Path(tmp) / "m.tcia", download_server_url=url,
            include_annotation=include_annotation, retries=retries, databasket_id=basket,
        )
        data = path.read_bytes()
        back = read_manifest(path)
    flag = "true" if include_annotation else "false"
    assert data.decode("ascii").split("\n")[:6] == [
        f"downloadServerUrl={url}", f"includeAnnotation={flag}", f"noOfrRetry={retries}",
        f"databasketId={basket}", "manifestVersion=3.0", "ListOfSeriesToDownload=",
    ]
    assert (back.download_server_url, back.include_annotation, back.retries) == (
        url, include_annotation, retries,
    )
    assert back.series_uids == list(dict.fromkeys(series_uids))


@pytest.mark.parametrize("basket", ["../../x.tcia", "/tmp/abs.tcia", "..", "sub\\\\x.tcia",
                                    "CON", "aux.txt", "nul.tcia"])
def test_a_hostile_databasket_id_cannot_name_a_file_outside_the_folder(tmp_path, basket):
    folder = tmp_path / "inside"
    folder.mkdir()
    text = f"databasketId={basket}\nListOfSeriesToDownload=\n1.2.3\n"
    manifest = read_manifest(io.StringIO(text))
    with pytest.raises(ValueError, match="databasketId"):
        write_manifest(manifest, folder)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["inside"]


def test_many_continuation_lines_are_read_in_linear_time():
    text = "downloadServerUrl=a" + "\\\n b" * 200_000 + "\nListOfSeriesToDownload=\n1.2.3\n"
    start = time.monotonic()
    manifest = read_manifest(io.StringIO(text))
    assert time.monotonic() - start < 5  # quadratic joining took minutes
    assert manifest.download_server_url == "a" + "b" * 200_000


def test_a_malformed_unicode_escape_error_is_short():
    text = "downloadServerUrl=" + "x" * 1_000_000 + "\\u12\nListOfSeriesToDownload=\n1.2.3\n"
    with pytest.raises(ValueError, match="malformed") as err:
        read_manifest(io.StringIO(text))
    assert len(str(err.value)) < 300

"""The query contract on backend="idc" (the sample archive's IDC index): the same frames as NBIA's
for the same calls, no request; "auto" choosing NBIA, and the index when NBIA cannot be reached.

Each frame from the index is compared with NBIA's answer to the same call, row for row (both
sorted), column for column: same names, same dtypes, same values, except for the fields the index
does not hold (:data:`LACKS`), which must be null.
"""

from __future__ import annotations

import os
import socket
import warnings
from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from test_search import CASES as SEARCHES
from test_search import expected

from intake_tcia import TCIAClient
from intake_tcia.errors import (
    IDCFallbackWarning,
    TCIABackendError,
    TCIAConnectionError,
    TCIAHTTPError,
    TCIANotFoundError,
    TCIAUnknownNameError,
)
from intake_tcia.idc.index import IDCIndex
from intake_tcia.idc.queries import answer
from intake_tcia.schema import SCHEMAS, frame_from_records
from intake_tcia.testing import ArchiveServer, write_idc_index
from intake_tcia.testing.builder import parse_mdy

#: Fields the IDC index does not hold: null in its frames.
LACKS = frozenset(
    {
        "ProtocolName",
        "AnnotationsFlag",
        "Site",
        "AdmittingDiagnosisDescription",
        "SoftwareVersions",
        "ReleasedStatus",
        "PatientName",
        "EthnicGroup",
        "AdmittingDiagnosesDescription",
        "StudyID",
        "LongitudinalTemporalEventType",
        "LongitudinalTemporalOffsetFromEvent",
        "PixelSpacing(mm)-Row",
        "SliceThickness(mm)",
    }
)


def client_for(server, cache, backend, **options):
    return TCIAClient(
        api_url=server.api_url,
        nlst_api_url=server.nlst_api_url,
        cache_dir=cache,
        backend=backend,
        retries=0,
        **options,
    )


@pytest.fixture
def both(server, tmp_cache, idc_index):
    """(NBIA client, IDC client) over the same sample archive."""
    with (
        client_for(server, tmp_cache, "nbia") as nbia,
        client_for(server, tmp_cache, "idc", idc_index=idc_index) as idc,
    ):
        yield nbia, idc


def assert_same(nbia: pd.DataFrame, idc: pd.DataFrame) -> None:
    """Same columns and dtypes; same rows on every field the index holds; the rest null."""
    assert list(idc.columns) == list(nbia.columns)
    assert idc.dtypes.to_dict() == nbia.dtypes.to_dict()
    lacking = [c for c in idc.columns if c in LACKS]
    assert idc[lacking].isna().all().all(), idc[lacking].notna().any()
    held = [c for c in idc.columns if c not in LACKS]
    left = nbia[held].sort_values(held, ignore_index=True, na_position="first")
    right = idc[held].sort_values(held, ignore_index=True, na_position="first")
    pd.testing.assert_frame_equal(right, left)


def firsts(server):
    """One series row per (collection, modality): the values the calls below are given."""
    table = server.archive.table
    return table.drop_duplicates(["Collection", "Modality"]).to_dict("records")


#: (method, keywords filled from a series row; names given in lower case where NBIA folds them)
CALLS = [
    ("collections", ()),
    ("modalities", ()),
    ("modalities", ("collection",)),
    ("modalities", ("collection", "body_part")),
    ("modalities", ("body_part",)),
    ("body_parts", ()),
    ("body_parts", ("collection",)),
    ("body_parts", ("modality",)),
    ("body_parts", ("collection", "modality")),
    ("manufacturers", ()),
    ("manufacturers", ("collection",)),
    ("manufacturers", ("collection", "modality")),
    ("manufacturers", ("modality", "body_part")),
    ("patients", ()),
    ("patients", ("collection",)),
    ("patients_by_modality", ("collection", "modality")),
    ("studies", ()),
    ("studies", ("collection",)),
    ("studies", ("patient_id",)),
    ("studies", ("study_uid",)),
    ("studies", ("collection", "patient_id")),
    ("series", ()),
    ("series", ("collection",)),
    ("series", ("collection", "modality")),
    ("series", ("patient_id",)),
    ("series", ("study_uid",)),
    ("series", ("series_uid",)),
    ("series", ("modality", "body_part")),
    ("series", ("manufacturer",)),
    ("series", ("collection", "manufacturer_model")),
    ("series", ("collection", "patient_id", "study_uid", "modality")),
    ("value_counts_per_collection", ("collection",)),
]
_SOURCES = {
    "collection": "Collection",
    "patient_id": "PatientID",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "manufacturer": "Manufacturer",
    "manufacturer_model": "ManufacturerModelName",
}


def _call(client, method, kwargs):
    if method == "value_counts_per_collection":
        return [
            client.value_counts(of, **kwargs) for of in ("modality", "body_part", "manufacturer")
        ]
    return [getattr(client, method)(**kwargs)]


@pytest.mark.parametrize(
    "method, keywords", CALLS, ids=[f"{m}-{'+'.join(k) or 'all'}" for m, k in CALLS]
)
def test_every_query_gives_nbias_frame(both, server, method, keywords):
    nbia, idc = both
    seen = set()
    for row in firsts(server):
        if any(pd.isna(row[_SOURCES[k]]) for k in keywords):
            continue
        kwargs = {k: row[_SOURCES[k]] for k in keywords}
        kwargs = {
            k: v.lower() if k in ("collection", "modality", "body_part") else v
            for k, v in kwargs.items()
        }
        if tuple(kwargs.items()) in seen:
            continue
        seen.add(tuple(kwargs.items()))
        server.clear_log()
        answers = _call(idc, method, kwargs)
        assert server.requests == []  # the index answered, no request
        for ours, theirs in zip(answers, _call(nbia, method, kwargs), strict=True):
            assert len(ours), (method, kwargs)
            assert_same(theirs, ours)
    assert seen


def test_values_counted_over_the_whole_archive(both, server):
    """Patients per value over both hosts at once (NBIA answers per host)."""
    nbia, idc = both
    table = server.archive.table
    for of, column in [
        ("modality", "Modality"),
        ("body_part", "BodyPartExamined"),
        ("manufacturer", "Manufacturer"),
        ("collection", "Collection"),
    ]:
        ours = idc.value_counts(of)
        assert ours.dtypes.to_dict() == nbia.value_counts(of).dtypes.to_dict()
        patients = table.assign(v=table[column].fillna("")).drop_duplicates(
            ["v", "Collection", "PatientID"]
        )
        assert (
            dict(zip(ours[column], ours["Count"], strict=True))
            == patients["v"].value_counts().to_dict()
        )
        assert (ours["Authorized"] == 1).all()


def test_size_metadata_and_dated_queries(both, server):
    nbia, idc = both
    uids = server.archive.series["SeriesInstanceUID"].tolist()
    for uid in uids:
        assert idc.series_size(uid) == nbia.series_size(uid)
    assert_same(nbia.series_metadata(uids), idc.series_metadata(uids))
    assert_same(nbia.series_metadata(uids[:3]), idc.series_metadata(uids[:3]))
    for name, info in server.archive.collections.items():
        if name not in set(server.archive.series["Collection"]):
            continue
        released = parse_mdy(info.date_released)
        for since in (released - timedelta(days=1), released, released + timedelta(days=1)):
            assert_same(nbia.new_patients(name, since), idc.new_patients(name, since))
            assert_same(nbia.new_studies(name, since), idc.new_studies(name, since))
            assert_same(nbia.updated_series(since), idc.updated_series(since))
    assert len(idc.updated_series("2000-01-01")) == len(uids)


def test_empty_answers_and_unknown_names_as_nbia(both, server):
    nbia, idc = both
    for client in (nbia, idc):
        empty = client.series(collection="NLST", modality="CR")  # both exist, not together
        assert empty.empty and list(empty.columns) == SCHEMAS["getSeries"].names
        nothing = frame_from_records([], SCHEMAS["getSeries"])
        assert empty.dtypes.to_dict() == nothing.dtypes.to_dict()
    for kwargs in (
        dict(collection="Pydicom-DICOMDIRR"),
        dict(modality="CTT"),
        dict(collection="NLST", patient_id="PYCT-001"),
    ):
        errors = []
        for client in (nbia, idc):
            with pytest.raises(TCIAUnknownNameError) as err:
                client.series(**kwargs)
            errors.append((err.value.field, err.value.value, err.value.suggestions))
        assert errors[0] == errors[1]
    with pytest.raises(TCIANotFoundError):
        idc.series_size("1.2.3.4")


def test_bad_arguments_refused_before_the_index_is_read(server, tmp_cache, tmp_path):
    idc = client_for(server, tmp_cache, "idc", idc_index=tmp_path / "no-index-here")
    with pytest.raises(ValueError, match="series_uid"):
        idc.series(series_uid="1.2.abc")
    with pytest.raises(TypeError, match="colour"):
        idc.series(colour="red")
    with pytest.raises(ValueError, match="since"):
        idc.new_patients("NLST", "2020/13/45")
    with pytest.raises(TCIABackendError, match="no-index-here"):
        idc.series(collection="NLST")  # only now is the folder looked at
    assert server.requests == []


def test_what_the_index_cannot_answer_is_named(both, server, idc_index, tmp_cache):
    _, idc = both
    with pytest.raises(TCIABackendError, match="shared carts"):
        idc.shared_cart("nbia-0000")
    (idc_index / "version_metadata_index.parquet").unlink()
    undated = client_for(server, tmp_cache, "idc", idc_index=idc_index)
    with pytest.raises(TCIABackendError, match="release dates"):
        undated.new_patients("NLST", "2000-01-01")
    assert undated.series(collection="NLST")["DateReleased"].isna().all()


def test_a_collection_is_read_from_its_cached_arrow_copy(server, tmp_cache, idc_index):
    index = IDCIndex(idc_index, tmp_cache)
    first = answer(index, "getSeries", {"Collection": "NLST"})
    (copy,) = tmp_cache.glob("idc-index/*/nlst.arrow")
    table = ipc.open_file(pa.memory_map(str(copy))).read_all()
    assert table.num_rows == len(first) > 0
    changed = table.set_column(
        table.column_names.index("SeriesDescription"),
        "SeriesDescription",
        pa.array(["from the copy"] * table.num_rows, pa.large_string()),
    )
    with ipc.new_file(str(copy) + ".new", changed.schema) as out:
        out.write_table(changed)
    os.replace(str(copy) + ".new", copy)  # as the index writes it: the mapped file stays whole
    again = answer(IDCIndex(idc_index, tmp_cache), "getSeries", {"Collection": "nlst"})
    assert set(again["SeriesDescription"]) == {"from the copy"}  # read from the copy
    pd.testing.assert_frame_equal(
        again.drop(columns="SeriesDescription"), first.drop(columns="SeriesDescription")
    )


def test_a_changed_index_is_read_again(server, tmp_cache, idc_index):
    client = client_for(server, tmp_cache, "idc", idc_index=idc_index)
    before = client.series(collection="NLST")
    path = idc_index / "idc_index.parquet"
    table = pq.read_table(path)
    gone = before["SeriesInstanceUID"].iloc[0]
    pq.write_table(table.filter(pa.compute.field("SeriesInstanceUID") != gone), path)
    after = client.series(collection="NLST")
    assert len(after) == len(before) - 1 and gone not in set(after["SeriesInstanceUID"])


def test_the_written_index_has_the_real_files_columns_and_types(tmp_path, server):
    idc_index_data = pytest.importorskip("idc_index_data")
    from pathlib import Path

    real = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH).parent
    folder = write_idc_index(tmp_path / "index", server.archive)
    for name in (
        "idc_index.parquet",
        "collections_index.parquet",
        "version_metadata_index.parquet",
    ):
        ours, theirs = pq.read_schema(folder / name), pq.read_schema(real / name)
        assert ours.remove_metadata().equals(theirs.remove_metadata()), name
    index = IDCIndex(folder)
    uids = server.archive.series["SeriesInstanceUID"].tolist()[::-1]
    where = index.series_locations(uids + ["1.2.3.4"])
    assert where["SeriesInstanceUID"].tolist() == uids  # in the order given, unknown left out
    assert (
        where["series_aws_url"] == "s3://idc-open-data/" + where["crdc_series_uuid"] + "/*"
    ).all()
    sizes = server.archive.series.set_index("SeriesInstanceUID").loc[uids]
    assert where["instanceCount"].tolist() == sizes["ImageCount"].tolist()


def test_doi_lookups_and_descriptions_from_the_index(both, server):
    nbia, idc = both
    for info in server.archive.collections.values():
        if info.name not in set(server.archive.series["Collection"]):
            continue
        for doi in (info.doi, info.doi.lower(), info.doi_url):
            for level in ("series", "collection"):
                assert_same(
                    nbia.series_for_doi(doi, level=level), idc.series_for_doi(doi, level=level)
                )
        ours = idc.collection_descriptions(info.name.lower())
        theirs = nbia.collection_descriptions(info.name.lower())
        assert ours.dtypes.to_dict() == theirs.dtypes.to_dict()
        assert ours["collectionName"].tolist() == [info.name]
        assert ours["descriptionText"].tolist() == theirs["descriptionText"].tolist()
        assert ours["descriptionURI"].tolist() == theirs["descriptionURI"].tolist()
    assert len(idc.collection_descriptions()) == len(nbia.collection_descriptions())
    server.clear_log()
    assert idc.series_for_doi("10.7937/NO-SUCH-DOI").empty
    idc.collection_descriptions()
    assert server.requests == []  # the index answered


# -- backend="auto" -------------------------------------------------------------------------


def test_auto_asks_nbia_when_it_answers(server, tmp_cache, idc_index):
    nbia = client_for(server, tmp_cache, "nbia")
    auto = client_for(server, tmp_cache, "auto", idc_index=idc_index)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pd.testing.assert_frame_equal(auto.series(), nbia.series())
    assert server.count("getSeries") == 4  # two hosts, each client


def test_auto_falls_back_to_the_index_when_nbia_is_down(tmp_cache, idc_index):
    with ArchiveServer() as stopped:
        urls = dict(api_url=stopped.api_url, nlst_api_url=stopped.nlst_api_url)
    # stopped: nothing listens at its ports any more
    auto = TCIAClient(
        **urls,
        cache_dir=tmp_cache,
        backend="auto",
        idc_index=idc_index,
        retries=1,
        backoff_factor=0.01,
    )
    idc = TCIAClient(**urls, cache_dir=tmp_cache, backend="idc", idc_index=idc_index)
    for call in (
        lambda c: c.series(collection="NLST"),
        lambda c: c.collections(),
        lambda c: c.search(modality="CT"),
    ):
        with pytest.warns(IDCFallbackWarning, match="could not be reached"):
            frame = call(auto)
        pd.testing.assert_frame_equal(frame, call(idc))
        assert len(frame)


def test_auto_does_not_fall_back_on_an_error_status(server, tmp_cache, idc_index):
    auto = client_for(server, tmp_cache, "auto", idc_index=idc_index)
    server.faults.add("status", endpoint="getSeries", code=500, times=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TCIAHTTPError) as err:
            auto.series(collection="NLST")
    assert err.value.status == 500


def test_auto_without_an_index_raises_the_connection_error(tmp_cache, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    auto = TCIAClient(
        api_url=f"http://127.0.0.1:{port}/",
        nlst_api_url=f"http://127.0.0.1:{port}/",
        cache_dir=tmp_cache,
        backend="auto",
        idc_index=tmp_path / "none",
    )
    with pytest.raises(TCIAConnectionError):
        auto.series(collection="NLST")


# -- search on the index -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SEARCHES))
def test_search_criteria_alone_and_combined_on_the_index(both, server, name):
    nbia, idc = both
    criteria, select = SEARCHES[name]
    server.clear_log()
    ours = idc.search(**criteria)
    assert server.requests == []
    assert sorted(ours["SeriesInstanceUID"]) == expected(server, select)
    assert_same(nbia.search(**criteria), ours)


@pytest.mark.parametrize(
    "criteria",
    [
        dict(min_studies=2, collection=["NLST", "Pydicom-DICOMDIR"]),
        dict(min_studies=1, modality="CT"),
        dict(modality=["CT", "MR"], all_modalities=True),
        dict(modality=["ct", "mr"], all_modalities=True, collection="NLST", body_part="chest"),
        dict(
            collection="NLST",
            species="human",
            released_to="2021-01-01",
            manufacturer="GE MEDICAL SYSTEMS",
            min_studies=2,
        ),
        dict(species="dog"),
    ],
)
def test_search_patient_criteria_and_unknown_values(both, criteria):
    nbia, idc = both
    ours = idc.search(**criteria)
    assert_same(nbia.search(**criteria), ours)
    assert list(ours.columns) == SCHEMAS["getSeries"].names


@pytest.mark.parametrize("criteria", [dict(collection="NoSuchCollection"), dict(modality="XX")])
def test_search_of_a_name_neither_backend_has_is_the_same_error(both, criteria):
    errors = []
    for client in both:
        with pytest.raises(TCIAUnknownNameError) as caught:
            client.search(**criteria)
        errors.append((caught.value.field, caught.value.value, caught.value.suggestions))
    assert errors[0] == errors[1]


@pytest.mark.parametrize(
    "criteria, message",
    [
        (dict(released_from="2020/01/01"), "released_from"),
        (dict(min_studies=0), "min_studies"),
        (dict(study_uid="1.2.x"), "study_uid"),
        (dict(species="cat"), "species"),
        (dict(all_modalities=True), "all_modalities"),
        (dict(colection="NLST"), "colection"),
    ],
)
def test_bad_search_criteria_refused_on_the_index(server, tmp_cache, tmp_path, criteria, message):
    idc = client_for(server, tmp_cache, "idc", idc_index=tmp_path / "never-read")
    with pytest.raises((ValueError, TypeError), match=message):
        idc.search(**criteria)


# -- the real index (idc-index-data), where it is cheap to ask -------------------------------


def test_the_real_index_answers_with_tcia_names(tmp_cache):
    idc_index_data = pytest.importorskip("idc_index_data")
    path = idc_index_data.IDC_INDEX_PARQUET_FILEPATH
    client = TCIAClient(backend="idc", cache_dir=tmp_cache)  # the installed package's index
    assert {"LIDC-IDRI", "NLST", "4D-Lung"} <= set(client.collections()["Collection"])
    # 4D-Lung comes first in the file: reading it stops early, and its copy is small
    frame = client.series(collection="4d-lung")
    raw = pq.read_table(
        path,
        columns=["collection_id", "SeriesInstanceUID", "instanceCount", "license_short_name"],
        filters=[("collection_id", "==", "4d_lung")],
    ).to_pandas()
    assert len(frame) == len(raw) > 0 and set(frame["Collection"]) == {"4D-Lung"}
    counts = raw.set_index("SeriesInstanceUID")["instanceCount"]
    assert frame.set_index("SeriesInstanceUID")["ImageCount"].to_dict() == counts.to_dict()
    assert set(raw["license_short_name"]) == {"CC BY 3.0"}
    assert set(frame["LicenseName"]) == {"Creative Commons Attribution 3.0 Unported License"}
    assert frame["SeriesDate"].dtype == "datetime64[ns]" and frame["DateReleased"].notna().all()
    where = client.idc_index.series_locations(raw["SeriesInstanceUID"][:3])
    assert where["series_aws_url"].str.fullmatch(r"s3://[a-z-]+/[0-9a-f-]{36}/\*").all()

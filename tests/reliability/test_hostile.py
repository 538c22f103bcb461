"""Nothing gets in: hostile zips, hostile servers, awkward query values and metadata that tries
to lead a download out of its folder, through every way in (client, download, tcia:// and the
catalog's series source)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from intake_tcia.errors import (
    TCIAConnectionError,
    TCIAError,
    TCIAIntegrityError,
    TCIAResponseError,
    TCIAUnknownNameError,
    UnsafeArchiveError,
)
from intake_tcia.fs import TCIAFileSystem
from intake_tcia.testing import ArchiveServer, SampleArchive

from .harness import (
    OPERATIONS,
    WAYS_IN,
    ask_via,
    audit_cache,
    audit_download,
    client_options,
    fetch_via,
    make_client,
    tree,
)

CT = "Pydicom-CT-Series"
EVIL_FILE = Path("/tmp/intake-tcia-evil.dcm")
#: A collection and patient name that needs encoding: query-string separators, a plus, a
#: percent sign, non-ASCII (Latin-1, as the DICOM files hold it).
AWKWARD = "R&D=1 + 50% #3?;é ü"
#: A filter value with a slash and characters beyond Latin-1 too.
AWKWARDER = "a/b&c=d+e%20f 中文 ✓"


def _ct_uid(server: ArchiveServer) -> str:
    series = server.archive.series
    return series.loc[(series["Collection"] == CT) & (series["Modality"] == "CT"),
                      "SeriesInstanceUID"].iloc[0]


# -- hostile zips ---------------------------------------------------------------------------------


HOSTILE_ZIPS = {
    "absolute_path": {}, "dotdot": {}, "symlink": {}, "duplicate": {},
    "bomb": {"size": 64 << 20},  # 64 MiB of zeros in about 64 kB
}


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A folder holding the cache, the destination and a neighbour; /tmp's evil file is
    checked not to appear."""
    (tmp_path / "neighbour").mkdir()
    (tmp_path / "neighbour" / "keep.txt").write_text("untouched")
    existed = EVIL_FILE.exists()
    yield tmp_path
    assert existed or not EVIL_FILE.exists(), "a zip member was written to /tmp"


def _assert_refused(way: str, server: ArchiveServer, uid: str, home: Path) -> None:
    """Getting ``uid`` the ``way`` given raises UnsafeArchiveError naming the series (a
    download reports it in its row)."""
    with pytest.raises(TCIAError, match=uid) as info:
        fetch_via(way, server, client_options(server, home / "cache"), uid, home / "dest")
    assert isinstance(info.value, UnsafeArchiveError) or (
        way == "download" and "UnsafeArchiveError" in str(info.value))


def _assert_nothing_got_in(home: Path, before: set[str]) -> None:
    """Only folders and lock files are new under ``home``; no link, no file of the zip."""
    new = tree(home) - before
    assert not [entry for entry in new if entry.startswith("l ")]
    files = [entry for entry in new if entry.startswith("f ")]
    assert all(entry.endswith(".lock") and "/locks/" in entry for entry in files), files
    assert (home / "neighbour" / "keep.txt").read_text() == "untouched"


@pytest.mark.parametrize("entry", WAYS_IN)
@pytest.mark.parametrize("kind", list(HOSTILE_ZIPS))
def test_hostile_zips_are_refused_and_nothing_is_written(
    server: ArchiveServer, home: Path, kind: str, entry: str
) -> None:
    uid = _ct_uid(server)
    server.faults.add(kind, endpoint="getImage", series=uid, times=5, **HOSTILE_ZIPS[kind])
    before = tree(home)
    _assert_refused(entry, server, uid, home)
    assert server.count("getImage") == 1  # refused, not retried
    _assert_nothing_got_in(home, before)


@pytest.mark.slow
@pytest.mark.parametrize("entry", WAYS_IN)
def test_a_full_size_zip_bomb_is_refused(server: ArchiveServer, home: Path, entry: str) -> None:
    uid = _ct_uid(server)
    server.faults.add("bomb", endpoint="getImage", series=uid, size=1 << 30)
    before = tree(home)
    _assert_refused(entry, server, uid, home)
    _assert_nothing_got_in(home, before)


# -- an archive holding hostile metadata ----------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    """A server whose archive adds: ``liar``, a 2 MB series whose getSeriesSize says 1000
    bytes; ``climber``, a series of patient ``../../x``; ``forger``, a series whose metadata
    gives Collection ``/etc``, PatientID ``..`` and StudyInstanceUID ``../../../y``;
    ``awkward``, a series whose collection and patient are :data:`AWKWARD`."""
    archive = SampleArchive(tmp_path_factory.mktemp("hostile-archive"))
    liar = archive.add_synthetic_series("Evil", "LIAR", 4, 512, 512, seed=1)
    climber = archive.add_synthetic_series("Evil", "../../x", 2, 32, 32, seed=2)
    forger = archive.add_synthetic_series("Evil", "FORGER", 2, 32, 32, seed=3)
    awkward = archive.add_synthetic_series(AWKWARD, AWKWARD, 2, 32, 32, seed=4)
    rows = archive.series.set_index("SeriesInstanceUID")
    rows.loc[liar, "FileSize"] = 1000
    rows.loc[forger, ["Collection", "PatientID", "StudyInstanceUID"]] = ["/etc", "..",
                                                                         "../../../y"]
    archive.seed_series_metadata(rows.loc[[liar, forger]].reset_index())
    with ArchiveServer(archive) as server:
        server.uids = {"liar": liar, "climber": climber, "forger": forger,  # type: ignore
                       "awkward": awkward}
        yield server


@pytest.fixture
def evil(hostile: ArchiveServer) -> Iterator[ArchiveServer]:
    hostile.reset()
    yield hostile
    hostile.reset()


@pytest.mark.parametrize("entry", WAYS_IN)
def test_a_zip_far_beyond_its_series_size_is_refused(
    evil: ArchiveServer, home: Path, entry: str
) -> None:
    before = tree(home)
    _assert_refused(entry, evil, evil.uids["liar"], home)
    _assert_nothing_got_in(home, before)


def _new_outside(home: Path, before: set[str], *inside: str) -> set[str]:
    """What appeared under ``home`` outside the folders ``inside`` (relative names)."""
    return {
        entry for entry in tree(home) - before
        if not any(entry[2:] == top or entry[2:].startswith(top + "/") for top in inside)
    }


@pytest.mark.parametrize("given", ["uids", "frame"])
def test_metadata_cannot_lead_a_download_out_of_dest(
    evil: ArchiveServer, home: Path, given: str
) -> None:
    uids = [evil.uids["climber"], evil.uids["forger"]]
    dest = home / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    with make_client(evil, home / "cache") as client:
        series: Any = uids
        if given == "frame":
            series = pd.concat([client.series(series_uid=uid) for uid in uids])
            assert set(series["PatientID"]) == {"../../x", ".."}
        before = tree(home)
        table = client.download(series, dest, progress=False)
    assert (table["status"] == "downloaded").all()
    for path in table["path"]:
        relative = Path(path).relative_to(dest)
        assert len(relative.parts) == 4 and ".." not in relative.parts
    audit = audit_download(dest, evil.archive, table)
    assert audit.complete == set(uids) and audit.corrupt == [] and audit.stray == []
    assert _new_outside(home, before, "a/b/dest", "cache") == set()
    assert audit_cache(home / "cache", evil.archive).complete == set(uids)


def test_filesystem_get_of_hostile_names_stays_in_its_folder(evil: ArchiveServer,
                                                            home: Path) -> None:
    fs = TCIAFileSystem(skip_instance_cache=True, **client_options(evil, home / "cache"))
    before = tree(home)
    try:
        fs.get("tcia://Evil", str(home / "out"), recursive=True)
    except (ValueError, FileNotFoundError):
        pass  # refused (fsspec checks that every target lies inside the folder)
    assert _new_outside(home, before, "out", "cache") == set()


# -- awkward query values -------------------------------------------------------------------------


def test_query_values_are_encoded_as_sent(evil: ArchiveServer, home: Path) -> None:
    with make_client(evil, home / "cache") as client:
        frame = client.series(collection=AWKWARD, patient_id=AWKWARD)
        assert frame["SeriesInstanceUID"].tolist() == [evil.uids["awkward"]]
        assert evil.requests[-1].params["Collection"] == AWKWARD
        assert evil.requests[-1].params["PatientID"] == AWKWARD
        with pytest.raises(TCIAUnknownNameError, match="no collection"):  # sent, then named
            client.series(collection=AWKWARDER, modality=AWKWARDER, body_part=AWKWARDER,
                          manufacturer=AWKWARDER, manufacturer_model=AWKWARDER)
        params = [r for r in evil.requests if r.endpoint == "getSeries"][-1].params
        for name in ("Collection", "Modality", "BodyPartExamined", "Manufacturer",
                     "ManufacturerModelName"):
            assert params[name] == AWKWARDER
        assert client.patients(AWKWARD)["PatientID"].tolist() == [AWKWARD]
        assert client.studies(collection=AWKWARD, patient_id=AWKWARD).shape[0] == 1
    fs = TCIAFileSystem(skip_instance_cache=True, **client_options(evil, home / "cache"))
    patients = fs.ls(f"tcia://{AWKWARD}", detail=False)
    assert patients == [f"{AWKWARD}/{AWKWARD}"]
    assert evil.requests[-1].params["Collection"] == AWKWARD
    (study,) = fs.ls(patients[0], detail=False)
    assert evil.requests[-1].params["PatientID"] == AWKWARD
    files = fs.find(study)
    assert len(files) == 2 and all(fs.cat(path)[128:132] == b"DICM" for path in files)


# -- hostile servers ------------------------------------------------------------------------------

#: Client settings of the hostile-server tests: what "within the timeout" means.
READ_TIMEOUT, QUERY_TIMEOUT, RETRIES = 0.5, 1.0, 1
#: The longest any operation may take: every attempt waiting its full timeout, plus slack.
DEADLINE = (RETRIES + 1) * (READ_TIMEOUT + QUERY_TIMEOUT) + 3
ANSWERS = {"html": {}, "invalid_json": {}, "endless": {"seconds": 4}, "hang": {"seconds": 4}}


#: The errors each answer may give for queries and for zips.
EXPECTED = {
    "html": (TCIAResponseError, TCIAIntegrityError),
    "invalid_json": (TCIAResponseError, TCIAIntegrityError),
    "endless": (TCIAResponseError, UnsafeArchiveError),
    "hang": (TCIAConnectionError, TCIAConnectionError),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("answer", list(ANSWERS))
def test_a_hostile_server_gives_a_clear_error_within_the_timeout(
    server: ArchiveServer, tmp_path: Path, answer: str, operation: str
) -> None:
    endpoint = OPERATIONS[operation]
    uid = _ct_uid(server)
    server.faults.add(answer, endpoint=endpoint, times=10, **ANSWERS[answer])
    options = client_options(server, tmp_path / "cache", retries=RETRIES,
                       timeout=(2.0, READ_TIMEOUT), query_timeout=QUERY_TIMEOUT)
    start = time.monotonic()
    with pytest.raises(TCIAError) as info:
        ask_via(operation, options, uid, tmp_path / "dest")
    elapsed = time.monotonic() - start
    assert elapsed < DEADLINE, f"{operation} took {elapsed:.1f} s"
    message = str(info.value)
    assert endpoint in message or uid in message  # it says what failed
    if operation not in ("download",):
        query, zipped = EXPECTED[answer]
        assert isinstance(info.value, zipped if endpoint == "getImage" else query)
    assert 1 <= server.count(endpoint) <= 1 + RETRIES
    assert not (tmp_path / "cache" / "series").exists() or not any(
        (tmp_path / "cache" / "series").iterdir())

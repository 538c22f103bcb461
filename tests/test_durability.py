"""Each byte written once, verified once: what the cache's records of size, mtime, ctime and
boot catch, and what they let through without hashing again."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from intake_tcia.client import TCIAClient
from intake_tcia.retrieval.cache import RECORD_NAME, boot_id
from intake_tcia.testing import ArchiveServer

CT_COLLECTION = "Pydicom-CT-Series"


@pytest.fixture
def client(server: ArchiveServer, tmp_cache: Path) -> Iterator[TCIAClient]:
    with TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url,
                    cache_dir=tmp_cache, retries=2, backoff_factor=0.01) as c:
        yield c


@pytest.fixture
def ct_uid(server: ArchiveServer) -> str:
    series = server.archive.series
    return series.loc[series["Collection"] == CT_COLLECTION].sort_values("ImageCount")[
        "SeriesInstanceUID"
    ].iloc[-1]


def test_a_file_only_touched_is_hashed_once_and_stamped_anew(
    server: ArchiveServer, client: TCIAClient, ct_uid: str
) -> None:
    cached = client.fetch_series(ct_uid)
    os.utime(cached.files[0])  # new times, same bytes
    assert client.cache.get(ct_uid) == cached  # hashed again, still its MD5
    record = json.loads((cached.path / RECORD_NAME).read_text())
    assert record["instances"][0]["mtime_ns"] == cached.files[0].stat().st_mtime_ns
    assert server.count("getImage") == 1


@pytest.mark.skipif(boot_id() is None, reason="no boot id: every file is flushed instead")
def test_a_series_written_in_another_boot_is_hashed_again_on_first_use(
    server: ArchiveServer, client: TCIAClient, ct_uid: str
) -> None:
    cached = client.fetch_series(ct_uid)
    record_path = cached.path / RECORD_NAME
    record = json.loads(record_path.read_text())
    assert record["unflushed_boot"] == boot_id()  # no file was flushed one by one
    record["unflushed_boot"] = "another-boot"  # as after a crash of the machine
    record_path.write_text(json.dumps(record))
    victim = cached.files[1]
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)  # what a crash can leave: the size, no data
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert client.cache.get(ct_uid) is None
    again = client.fetch_series(ct_uid)
    assert server.count("getImage") == 2
    # after the reboot a series that reads back whole is known to be on disk
    record = json.loads((again.path / RECORD_NAME).read_text())
    record["unflushed_boot"] = "another-boot"
    (again.path / RECORD_NAME).write_text(json.dumps(record))
    assert client.cache.get(ct_uid) is not None
    assert json.loads((again.path / RECORD_NAME).read_text())["unflushed_boot"] is None

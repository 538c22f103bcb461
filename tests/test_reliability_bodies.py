"""Hostile bodies and files that parsers choke on (issue #13): JSON nested deeper than any parser
goes, from a query answer, a token answer, a cache record or a record in the download folder,
gives an error of the package's family (or counts as no record), never a RecursionError; the
answers that have cost quadratic time (long strings, braces inside strings, white space between
rows, escapes, many rows) are parsed in linear time."""

from __future__ import annotations

import time

import pytest
import test_http
from test_http import V4, answer

from intake_tcia import TCIAClient
from intake_tcia.errors import TCIAAuthError, TCIAResponseError
from intake_tcia.retrieval.cache import RECORD_NAME, SeriesCache
from intake_tcia.testing import ArchiveServer

DEEP = b"[" * 200_000 + b"]" * 200_000

hostile = test_http.hostile  # the fixture: hostile loopback servers, closed after each test


def _client(url: str, tmp_path, **options) -> TCIAClient:
    return TCIAClient(
        api_url=url + V4, nlst_api_url=url + V4, cache_dir=tmp_path / "cache", retries=0, **options
    )


@pytest.mark.parametrize(
    "body",
    [
        DEEP,
        b'[{"PatientId": ' + DEEP + b"}]",
        b'{"a": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
    ],
)
def test_json_nested_too_deeply_is_a_response_error(hostile, tmp_path, body):
    server = hostile(lambda h: answer(h, body=body))
    with _client(server.url, tmp_path) as client:
        with pytest.raises(TCIAResponseError, match="nested too deeply|expected JSON"):
            client.patients("C")


def test_a_token_answer_nested_too_deeply_is_an_auth_error(hostile, tmp_path):
    body = b'{"access_token": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"  # within the 64 kB read

    def nbia(handler):
        answer(handler, body=body if "oauth" in handler.path else b"[]")

    server = hostile(nbia)
    with _client(server.url, tmp_path, api_version="token") as client:
        with pytest.raises(TCIAAuthError, match="token answer"):
            client.patients("C")


def test_a_record_nested_too_deeply_counts_as_no_record(server: ArchiveServer, tmp_path):
    uid = server.archive.series_uids("Pydicom-CT-Series")[0]
    with TCIAClient(
        api_url=server.api_url,
        nlst_api_url=server.nlst_api_url,
        cache_dir=tmp_path / "cache",
        retries=0,
    ) as client:
        table = client.download(
            uid, tmp_path / "dest", layout="{SeriesInstanceUID}", progress=False
        )
        for record in (
            client.cache.series_path(uid) / RECORD_NAME,
            tmp_path / "dest" / uid / RECORD_NAME,
        ):
            record.write_bytes(DEEP)
        assert SeriesCache(tmp_path / "cache").get(uid) is None  # absent: fetched again
        server.clear_log()
        again = client.download(
            uid, tmp_path / "dest", layout="{SeriesInstanceUID}", progress=False
        )
    assert table.loc[0, "status"] == "downloaded" and again.loc[0, "status"] == "downloaded"
    assert server.count("getImage") == 1 and client.cache.get(uid) is not None


#: Bodies of about ``n`` bytes that earlier parsers took quadratic time over.
SLOW_BODIES = {
    "one long string": lambda n: b'[{"PatientId": "' + b"x" * n + b'"}]',
    "braces in a string": lambda n: b'[{"PatientId": "' + b"}" * n + b'"}]',
    "escapes": lambda n: b'[{"PatientId": "' + b"\\\\" * (n // 2) + b'"}]',
    "white space between rows": lambda n: (
        b'[{"PatientId": "a"}' + b" " * n + b',{"PatientId": "b"}]'
    ),
    "a value that is no array": lambda n: b'{"PatientId": "' + b"x" * n + b'"}',
    "many small rows": lambda n: b"[" + b",".join([b'{"PatientId":"a"}'] * (n // 18)) + b"]",
}


def _parse_seconds(hostile, tmp_path, body: bytes) -> float:
    server = hostile(lambda h: answer(h, body=body))
    best = float("inf")
    with _client(server.url, tmp_path) as client:
        for _ in range(2):
            start = time.monotonic()
            client.patients("C")
            best = min(best, time.monotonic() - start)
    return best


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SLOW_BODIES))
def test_hostile_bodies_are_parsed_in_linear_time(hostile, tmp_path, kind):
    make = SLOW_BODIES[kind]
    small = _parse_seconds(hostile, tmp_path, make(2 << 20))
    large = _parse_seconds(hostile, tmp_path, make(8 << 20))
    # four times the bytes: about four times the time (quadratic would be sixteen)
    assert large < max(8 * small, 1.0), f"{kind}: {small:.2f} s for 2 MiB, {large:.2f} s for 8"

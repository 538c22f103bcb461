"""The download progress bar tells the truth when a download fails or is interrupted: it never
jumps to 100% for bytes that did not arrive."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from pathlib import Path

import pytest

from intake_tcia.client import TCIAClient
from intake_tcia.errors import DownloadError


@pytest.fixture
def client(server, tmp_cache: Path):
    with TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url, cache_dir=tmp_cache,
                    retries=1, backoff_factor=0.01) as c:
        yield c


@pytest.fixture
def ct_uid(server) -> str:
    series = server.archive.series
    return series.loc[series["Collection"] == "Pydicom-CT-Series"].sort_values("ImageCount")[
        "SeriesInstanceUID"].iloc[-1]


def _drawn(err: str) -> list[int]:
    """The percentages the text bar drew, in order (TQDM_MININTERVAL=0: every state)."""
    return [int(p) for p in re.findall(r"series:\s+(\d+)%", err)]


def test_a_failed_series_leaves_the_bar_short_of_100(server, client, ct_uid, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    server.faults.add("reset", endpoint="getImage", series=ct_uid, after_bytes=150_000, times=5)
    with pytest.raises(DownloadError):
        client.download([ct_uid], tmp_path / "dest")
    err = capsys.readouterr().err
    drawn = _drawn(err)
    assert drawn and max(drawn) < 100, err
    assert "1 failed" in err
    assert not re.search(r"[0-9.]+[GT]B/s", err), err  # no rate from a jump of phantom bytes


@pytest.mark.skipif(sys.platform == "win32", reason="os.kill SIGINT is POSIX")
def test_ctrl_c_leaves_the_bar_where_the_bytes_were(server, client, ct_uid, tmp_path, capsys,
                                                   monkeypatch):
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    server.faults.bandwidth = 100_000  # about 4 s for the series: time to press Ctrl-C
    # Ctrl-C after about a second, as a user would press it
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            client.download([ct_uid], tmp_path / "dest")
    finally:
        timer.cancel()
        server.faults.bandwidth = None
    err = capsys.readouterr().err
    drawn = _drawn(err)
    assert drawn and drawn[-1] < 100, err
    assert drawn == sorted(drawn)

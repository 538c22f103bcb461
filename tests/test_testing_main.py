"""``python -m intake_tcia.testing`` by hand: stopped by SIGTERM it leaves nothing behind; a taken
port is one line, not a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _start(tmp: Path, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-m", "intake_tcia.testing", "--quiet", *argv],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_sigterm_stops_it_and_removes_its_temporary_folders(tmp_path: Path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    process = _start(tmp)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        assert "Ctrl-C to stop" in "".join(lines), "".join(lines) + process.stderr.read()
        assert any(tmp.iterdir())  # the archive and the IDC index are written there
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp.iterdir()) == []


def test_a_taken_port_is_one_line_and_status_1(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _start(tmp_path, "--port", str(port))
        out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "cannot listen" in err and "--port" in err

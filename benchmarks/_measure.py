"""Shared helpers of the benchmarks: run a contender in its own process, report time and memory."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

#: Bytes per chunk of a replayed answer.
REPLAY_PIECE = 1 << 16


def peak_rss_mb() -> float:
    """float: this process' peak resident memory so far, in MB.

    Read from ``VmHWM``, which belongs to the address space made by exec; ``ru_maxrss`` is
    not used because Linux carries the parent's figure over fork and exec.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss_mb() -> float:
    """float: this process' resident memory now, in MB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


@functools.lru_cache(maxsize=1)
def compile_bytecode() -> None:
    """Compile intake-tcia's modules once, as an installed package has them (pip compiles the
    peers' at install): a checkout edited since its last import, or a shell with
    ``PYTHONDONTWRITEBYTECODE`` set, would otherwise compile them again in every fresh process,
    a cost no installed user pays."""
    import compileall

    import intake_tcia

    compileall.compile_dir(os.path.dirname(intake_tcia.__file__), quiet=1)


def run_contender(script: str, args: Sequence[str]) -> dict[str, Any]:
    """Run ``python script args`` in a fresh process and return the JSON object it prints on its
    last line, with ``process_cpu_s`` (user + system CPU seconds of that whole process and the
    children it waited for: the interpreter's start, its imports and the work, as a user pays
    them) and ``process_s`` (its wall time, start to exit) added."""
    compile_bytecode()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, script, *args], stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["process_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["process_s"] = wall
    return result


def run_on_seeded_archive(
    script: str, collection: str, rows: int, contenders: Sequence[str], *, rounds: int,
    repeat: int, replay: Sequence[str] = (),
) -> dict[str, list[dict[str, Any]]]:
    """Seed a sample archive with ``rows`` real series of ``collection`` (idc-index-data), then
    run each contender ``rounds`` times in its own process, interleaved so that drift favours
    none; each contender's results, in order. A contender is run as ``script --contender NAME
    --api-url URL --repeat N`` against the host that serves ``collection``; with ``replay``
    (requests such as ``"getSeries?Collection=NLST"``), against :func:`replayed` answers."""
    from intake_tcia.testing import ArchiveServer, SampleArchive, idc_series_table

    table = idc_series_table(collection=collection, limit=rows)
    archive = SampleArchive()
    archive.seed_series_metadata(table)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    with ArchiveServer(archive=archive) as server:
        url = server.nlst_api_url if collection == "NLST" else server.api_url
        print(f"seeded {len(table):,} real {collection} series "
              f"({table['PatientID'].nunique():,} patients), served at {url}")
        with replayed(url, replay) if replay else _same(url) as url:
            for _ in range(rounds):
                for name, found in runs.items():
                    options = ["--contender", name, "--api-url", url, "--repeat", str(repeat)]
                    found.append(run_contender(script, options))
    return runs


@contextmanager
def _same(url: str) -> Iterator[str]:
    yield url


@contextmanager
def replayed(url: str, requests: Sequence[str]) -> Iterator[str]:
    """Record the answers to ``requests`` (relative to ``url``) once and serve them from memory
    at a loopback URL that stands for ``url``, chunked in :data:`REPLAY_PIECE` bytes as a
    streaming server sends them, so that rendering them costs no contender anything. Printed:
    each answer's size."""
    answers = {}
    for request in requests:
        with urllib.request.urlopen(url + request) as answer:
            answers[request] = (answer.read(), answer.headers.get("Content-Type", ""))
        print(f"replaying {request}: {len(answers[request][0]) / 1e6:,.1f} MB")
    base = urlsplit(url).path

    class Replay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            body, kind = answers.get(self.path.removeprefix(base), (None, ""))
            if body is None:
                self.send_error(404, "not recorded")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with memoryview(body) as view:
                for start in range(0, len(body), REPLAY_PIECE):
                    piece = view[start:start + REPLAY_PIECE]
                    self.wfile.write(b"".join((b"%x\r\n" % len(piece), piece, b"\r\n")))
            self.wfile.write(b"0\r\n\r\n")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}{base}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def run_command(command: Sequence[str]) -> dict[str, Any]:
    """Run ``command`` (a program that is no Python of ours, such as curl) and measure it: its
    wall ``seconds``, ``cpu_s`` (user + system, from its rusage), ``peak_mb`` (its resident
    memory polled every 10 ms: ``ru_maxrss`` would carry over this process' figure through fork
    and exec) and its ``stdout``."""
    import psutil

    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out)
        watched, peak = psutil.Process(process.pid), 0
        while True:
            with contextlib.suppress(psutil.NoSuchProcess):  # a zombie: waited for below
                peak = max(peak, watched.memory_info().rss)
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        out.seek(0)
        stdout = out.read().decode()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} exited with {process.returncode}")
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_mb": peak / 2**20, "stdout": stdout}


def median(values: Sequence[float]) -> float:
    """float: the middle value (the mean of the two middle ones for an even count)."""
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print rows as an aligned text table."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)

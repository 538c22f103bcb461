"""The README as people read it: short, a real-archive quickstart on its first screen, and every
Python block running as written, in order, in the install its first line names."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The README is the package's long description too (the wheel's METADATA).
MAX_BYTES = 25_000
#: How the blocks' first lines name their install; the network ones are the only ones skipped.
NEEDS = re.compile(r"^# needs(?P<network> the network, and)?:? "
                   r"intake-tcia(\[(?P<extras>[a-z,]*)\])?( \(.*\))?$")
#: The tour's one install line: the union of what its blocks name.
TOUR_INSTALL = re.compile(r'Install for the tour: `python -m pip install -e "\.\[([a-z,]+)\]"`')

_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)

def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text: (line of the code's first line, code)."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def test_readme_is_short_with_a_real_archive_quickstart_first():
    text = README.read_text(encoding="utf-8")
    assert README.stat().st_size < MAX_BYTES
    headings = re.findall(r"^#{1,3} \S.*$", text, re.MULTILINE)
    assert headings[0] == "# intake-tcia"
    for needed in ("## Install", "## Quickstart: the real TCIA and IDC",
                   "## Two commands on a fresh machine", "## A tour", "## Figures"):
        assert needed in headings
    assert headings.index("## Quickstart: the real TCIA and IDC") < headings.index("## A tour")
    first_line, first = python_blocks(text)[0]
    assert first_line < 45  # on the first screen
    assert NEEDS.match(first.splitlines()[0]).group("network")
    assert "TCIAClient()" in first and 'backend="idc"' in first
    assert len(first.splitlines()) <= 6  # the comment and five lines
    # the two set-up commands of a fresh machine
    assert 'python -m pip install -e ".[demo]" && intake-tcia demo' in text
    assert 'python -m pip install -e ".[test]" && python -m pytest' in text
    # about the package, not about how it was made
    assert not re.search(r"#\d+\b|\bissue\b|\bbranch\b|engineer", text, re.IGNORECASE)


def test_python_blocks_are_found():
    blocks = python_blocks("x\n```python\na = 1\n```\n\n```bash\nls\n```\n```python\nb = 2\n```\n")
    assert blocks == [(3, "a = 1\n"), (10, "b = 2\n")]


def test_hidden_modules_follow_the_extras(hidden_modules):
    pytest.importorskip("matplotlib")
    pytest.importorskip("xarray")
    base = hidden_modules([])
    assert "matplotlib" in base and "xarray" in base and "pandas" not in base
    plot = hidden_modules(["plot"])
    assert "matplotlib" not in plot and "xarray" in plot
    assert "PIL" not in plot  # matplotlib needs pillow: in that install too


# Runs the blocks in order in one namespace, as a user pasting them into one session would; a
# failing block names its README line. While a block runs, the packages of the extras it does not
# name cannot be imported (nor used from an earlier block's import): as in that install.
_RUNNER = """
import json, sys
namespace = {"__name__": "__main__"}
for line, code, names in json.load(open(sys.argv[1])):
    with hidden(names):
        exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)
    print(f"block at line {line}: ok", flush=True)
"""


def test_every_python_block_runs_in_order_in_the_install_it_names(tmp_path, hidden_modules,
                                                                  hiding):
    text = README.read_text(encoding="utf-8")
    blocks, named = [], set()
    for line, code in python_blocks(text):
        needs = NEEDS.match(code.splitlines()[0])
        assert needs, f"README.md line {line}: the first line must name the install it needs"
        if needs.group("network"):
            continue  # the real TCIA and IDC: only these are skipped
        extras = [e for e in (needs.group("extras") or "").split(",") if e]
        named.update(extras)
        blocks.append((line, code, hidden_modules(extras)))
    assert len(blocks) >= 8
    tour = TOUR_INSTALL.search(text)
    assert tour and set(tour.group(1).split(",")) == named, "the tour's install line"
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps(blocks))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_TCIA_")}
    env["INTAKE_TCIA_CACHE_DIR"] = str(tmp_path / "cache")
    env["MPLBACKEND"] = "Agg"
    done = subprocess.run([sys.executable, "-c", hiding + _RUNNER, str(script)], cwd=tmp_path,
                          env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok") == len(blocks)
    assert "Warning" not in done.stderr, done.stderr  # no warning on a plain call
    assert (tmp_path / "data").is_dir()  # the tour's download landed where it said
    assert (tmp_path / "ct.png").stat().st_size > 10_000  # the picture was drawn


@pytest.mark.parametrize("name", ["README.md", "CHANGELOG.md"])
def test_no_text_file_was_blown_up_by_a_bad_replace(name):
    assert (ROOT / name).stat().st_size < 100_000

"""The README as people read it: small, with headings, and every Python block running as written."""

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
MAX_BYTES = 100_000

_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)

# Runs the blocks in order in one namespace, as a user pasting them into one session would; a
# failing block names its README line.
_RUNNER = """
import json, sys
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for line, code in blocks:
    exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)
    print(f"block at line {line}: ok", flush=True)
"""


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text: (line of the code's first line, code)."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def test_readme_is_a_readable_size_with_headings():
    text = README.read_text(encoding="utf-8")
    assert README.stat().st_size < MAX_BYTES
    headings = re.findall(r"^#{1,3} \S.*$", text, re.MULTILINE)
    assert headings[0] == "# intake-tcia"
    for needed in ("## Two commands on a fresh machine", "## A tour", "## Figures"):
        assert needed in headings
    # the two set-up commands of a fresh machine
    assert 'python -m pip install -e ".[demo]" && intake-tcia demo' in text
    assert 'python -m pip install -e ".[test]" && python -m pytest' in text


def test_python_blocks_are_found():
    blocks = python_blocks("x\n```python\na = 1\n```\n\n```bash\nls\n```\n```python\nb = 2\n```\n")
    assert blocks == [(3, "a = 1\n"), (10, "b = 2\n")]


def test_every_python_block_runs_in_order_against_the_sample_archive(tmp_path):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 5
    (tmp_path / "catalogs").symlink_to(ROOT / "catalogs")  # the tour names catalogs/tcia.yaml
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps(blocks))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_TCIA_")}
    env["INTAKE_TCIA_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-c", _RUNNER, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok") == len(blocks)
    assert "Warning" not in done.stderr, done.stderr  # no warning on a plain call
    assert (tmp_path / "data").is_dir()  # the tour's download landed where it said


@pytest.mark.parametrize("name", ["README.md", "CHANGELOG.md"])
def test_no_text_file_was_blown_up_by_a_bad_replace(name):
    assert (ROOT / name).stat().st_size < MAX_BYTES

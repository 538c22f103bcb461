"""The README as people read it: short, a real-archive quickstart on its first screen, and every
Python block running as written, in order, in the install its first line names."""

from __future__ import annotations

import importlib.metadata
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
NEEDS = re.compile(r"^# needs(?P<network> the network, and)?:? intake-tcia(\[(?P<extras>[a-z,]*)\])?"
                   r"( \(.*\))?$")
#: The tour's one install line: the union of what its blocks name.
TOUR_INSTALL = re.compile(r'Install for the tour: `python -m pip install -e "\.\[([a-z,]+)\]"`')

_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)

# Runs the blocks in order in one namespace, as a user pasting them into one session would; a
# failing block names its README line. While a block runs, the packages of the extras it does not
# name cannot be imported (nor used from an earlier block's import): as in that install.
_RUNNER = """
import importlib.machinery, json, sys
blocks = json.load(open(sys.argv[1]))

class Hidden:
    # a path finder that does not see some top-level packages: as if they were not installed
    names = set()
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)

where = sys.meta_path.index(importlib.machinery.PathFinder)
hidden = sys.meta_path[where] = Hidden(importlib.machinery.PathFinder)
namespace = {"__name__": "__main__"}
for line, code, names in blocks:
    hidden.names = set(names)
    away = {k: sys.modules.pop(k) for k in list(sys.modules) if k.partition(".")[0] in names}
    exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)
    hidden.names = set()
    for name, module in away.items():
        sys.modules.setdefault(name, module)
    print(f"block at line {line}: ok", flush=True)
"""


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text: (line of the code's first line, code)."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def _requirements(names, optional):
    """The requirements the extras ``names`` bring, intake-tcia[...] references expanded."""
    from packaging.requirements import Requirement

    out = []
    for name in names:
        for text in optional[name]:
            requirement = Requirement(text)
            if requirement.name == "intake-tcia":
                out += _requirements(requirement.extras, optional)
            else:
                out.append(requirement)
    return out


def _installed_closure(requirements) -> set[str]:
    """Distribution names of the requirements and everything they need, as installed here."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            needs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in needs:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e})
                                         for e in ("", *requirement.extras)):
                todo.append(sub)
    return {key.partition("[")[0] for key in seen}


def hidden_modules(extras: list[str]) -> list[str]:
    """Top-level modules of the optional packages that an install of ``extras`` lacks."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    unknown = sorted(set(extras) - set(optional))
    assert not unknown, f"no extra {unknown}"
    kept = _installed_closure([Requirement(r) for r in project["dependencies"]]
                              + _requirements(extras, optional))
    others = {canonicalize_name(r.name) for r in _requirements(optional, optional)} - kept
    modules = importlib.metadata.packages_distributions()
    return sorted(module for module, dists in modules.items()
                  if {canonicalize_name(d) for d in dists} & others
                  and not {canonicalize_name(d) for d in dists} & kept)


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


def test_hidden_modules_follow_the_extras():
    pytest.importorskip("matplotlib")
    pytest.importorskip("xarray")
    base = hidden_modules([])
    assert "matplotlib" in base and "xarray" in base and "pandas" not in base
    plot = hidden_modules(["plot"])
    assert "matplotlib" not in plot and "xarray" in plot
    assert "PIL" not in plot  # matplotlib needs pillow: in that install too


def test_every_python_block_runs_in_order_in_the_install_it_names(tmp_path):
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
    done = subprocess.run([sys.executable, "-c", _RUNNER, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok") == len(blocks)
    assert "Warning" not in done.stderr, done.stderr  # no warning on a plain call
    assert (tmp_path / "data").is_dir()  # the tour's download landed where it said
    assert (tmp_path / "ct.png").stat().st_size > 10_000  # the picture was drawn


@pytest.mark.parametrize("name", ["README.md", "CHANGELOG.md"])
def test_no_text_file_was_blown_up_by_a_bad_replace(name):
    assert (ROOT / name).stat().st_size < 100_000

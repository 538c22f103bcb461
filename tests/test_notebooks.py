"""The notebooks run top to bottom against the sample archive (nbmake), and carry no outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [nb.name for nb in NOTEBOOKS] == [
        "01-browse.ipynb", "02-series-to-volume.ipynb", "03-mix-catalogs.ipynb"
    ]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(notebook):
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    # the first cell starts the sample archive itself and says how to use the real TCIA
    assert "ArchiveServer" in "".join(code[0]["source"])
    assert "real TCIA" in "".join(code[0]["source"])


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(notebook, tmp_path):
    pytest.importorskip("nbmake")
    # The kernel imports this working tree, installed or not.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    ))
    env = {k: v for k, v in env.items() if not k.startswith("INTAKE_TCIA_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=240", "-q",
         "-p", "no:cacheprovider", "--rootdir", str(ROOT), str(notebook)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout

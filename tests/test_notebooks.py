"""The notebooks run top to bottom against the sample archive, and are committed with their outputs.

The committed outputs are what a reader sees on GitHub; a test runs each notebook again and fails
when they are stale in shape (other cells, or other kinds of output). After changing a notebook or
what it shows, refresh them with ``python tests/test_notebooks.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def execute(notebook: Path, tmpdir: Path | None = None) -> Any:
    """Run a notebook in a fresh kernel that imports this working tree; the executed node.
    ``tmpdir``: the kernel's temporary folder (TMPDIR)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    node = nbformat.read(notebook, as_version=4)
    saved = dict(os.environ)
    try:  # the kernel inherits this environment: this tree first, no INTAKE_TCIA_* of the caller
        for name in [k for k in os.environ if k.startswith("INTAKE_TCIA_")]:
            del os.environ[name]
        if tmpdir is not None:
            os.environ["TMPDIR"] = str(tmpdir)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), saved.get("PYTHONPATH")) if p)
        nbclient.NotebookClient(
            node, timeout=240, kernel_name="python3",
            resources={"metadata": {"path": str(notebook.parent)}},
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return node


def shape(node: Any) -> list[tuple[str, str, list[tuple[Any, ...]]]]:
    """Each cell's type, source, and (code cells) the kinds of its outputs, in order.

    Text on stderr is left out: whether a progress bar or a log line shows depends on how fast
    the machine is (errors are outputs of their own kind, and count)."""
    cells = []
    for cell in node["cells"]:
        kinds = [
            (out["output_type"], out.get("name"), tuple(sorted(out.get("data", {}))))
            for out in cell.get("outputs", [])
            if out.get("name") != "stderr"
        ]
        cells.append((cell["cell_type"], "".join(cell["source"]), kinds))
    return cells


def test_there_are_notebooks():
    assert [nb.name for nb in NOTEBOOKS] == [
        "01-browse.ipynb", "02-series-to-volume.ipynb", "03-mix-catalogs.ipynb",
        "04-segmentation-on-image.ipynb", "05-idc-sql.ipynb", "06-cohort-on-dask.ipynb",
    ]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_starts_the_sample_archive_and_says_how_to_use_tcia(notebook):
    nbformat = pytest.importorskip("nbformat")
    code = [c for c in nbformat.read(notebook, as_version=4)["cells"] if c["cell_type"] == "code"]
    assert "ArchiveServer" in code[0]["source"] and "real TCIA" in code[0]["source"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_its_committed_outputs_are_current(notebook, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    committed = nbformat.read(notebook, as_version=4)
    outputs = [o for c in committed["cells"] for o in c.get("outputs", [])]
    assert outputs and not [o for o in outputs if o["output_type"] == "error"]
    fresh = execute(notebook, tmp_path)  # raises CellExecutionError naming the cell if one fails
    assert shape(fresh) == shape(committed), "stale outputs: python tests/test_notebooks.py"
    # a run leaves no cache, index, archive or other folder of ours in the temporary folder
    # (dask's own "dask-scratch-space" is dask's)
    ours = ("intake-tcia", "idc-index", "nifti")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(ours)] == []


if __name__ == "__main__":
    import nbformat

    for path in [Path(p) for p in sys.argv[1:]] or NOTEBOOKS:
        nbformat.write(execute(path.resolve()), path)
        print(f"refreshed {path}")

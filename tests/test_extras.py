"""The extras hold what their features need, and no more than that: the demo runs in the demo
install alone (its IDC step on moto's S3 server, not all of moto's AWS), the notebooks in the
notebooks install."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")
packaging_requirements = pytest.importorskip("packaging.requirements")


def _extra(name: str) -> list:
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    return [packaging_requirements.Requirement(r) for r in optional[name]]


def test_the_demo_extra_takes_moto_s3_not_every_aws_service():
    moto = [r for r in _extra("demo") if r.name == "moto"]
    assert len(moto) == 1 and moto[0].extras == {"s3"}  # moto[server] is 160 MB more
    assert {"pillow", "flask", "flask-cors"} <= {r.name for r in _extra("demo")}


def test_the_demo_runs_in_the_demo_install_alone(tmp_path, hidden_modules, hiding):
    hidden = hidden_modules(["demo"])
    assert "xarray" in hidden and "highdicom" in hidden and "moto" not in hidden
    code = hiding + (
        "import sys\n"
        f"with hidden({json.dumps(hidden)}):\n"
        "    from intake_tcia.cli import main\n"
        "    sys.exit(main(['demo']))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_TCIA_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "same voxels as from NBIA: True" in done.stdout  # the IDC step ran
    assert (tmp_path / "intake-tcia-demo.png").stat().st_size > 1000


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")),
                         ids=lambda p: p.stem)
def test_what_a_notebook_uses_is_in_the_notebooks_install(notebook, hidden_modules):
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    imported = set(re.findall(r"^\s*(?:import|from) (\w+)", code, re.MULTILINE))
    used = imported | {module for call, module in (
        (".to_xarray(", "xarray"), (".to_dask(", "dask"), (".plot(", "matplotlib"),
        ("read_segmentation(", "highdicom"), ("to_nifti(", "nibabel"), (".sql(", "duckdb"))
        if call in code}
    hidden = set(hidden_modules(["notebooks"]))
    assert not used & hidden, f"{notebook.name} uses {sorted(used & hidden)}"
    assert {"ipykernel", "ipywidgets", "highdicom", "xarray", "dask", "duckdb"}.isdisjoint(hidden)

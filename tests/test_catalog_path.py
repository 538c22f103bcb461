"""The archive catalog ships inside the package: intake.open_catalog(intake_tcia.catalog_path())
works from an install, not only from a clone."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import intake_tcia

ROOT = Path(__file__).resolve().parents[1]


def test_catalog_path_opens_the_archive_catalog(env):
    import intake

    path = intake_tcia.catalog_path()
    assert Path(path).is_file() and Path(path).name == "tcia.yaml"
    cat = intake.open_catalog(path)
    assert {"tcia", "collections", "patients", "studies", "series"} <= set(cat)
    frame = cat.series(collection="Pydicom-CT-Series", modality="CT").read()
    assert len(frame) == 1
    # the clone's catalogs/tcia.yaml is that same file
    assert (ROOT / "catalogs" / "tcia.yaml").read_bytes() == Path(path).read_bytes()


def test_the_wheel_holds_the_catalog_and_it_opens_from_the_install(env, tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheel"),
         str(ROOT)], capture_output=True, text=True, timeout=240)
    if built.returncode != 0:  # the build backend comes from the package index
        pytest.skip(f"cannot build a wheel here: {built.stderr[-300:]}")
    wheel = next((tmp_path / "wheel").glob("intake_tcia-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("intake_tcia/catalogs/tcia.yaml")
        assert shipped == (ROOT / "catalogs" / "tcia.yaml").read_bytes()
        archive.extractall(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"  # no catalogs/ folder anywhere near
    elsewhere.mkdir()
    site = str(tmp_path / "site")
    code = ("import intake, intake_tcia; p = intake_tcia.catalog_path(); "
            f"assert p.startswith({site!r}), p; cat = intake.open_catalog(p); "
            "print(len(cat.collections.read()))")
    environ = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 3

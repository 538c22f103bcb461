"""What importing the package costs: pandas, pyarrow and pydicom only when first used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("pandas", "pyarrow", "pydicom", "numpy")


def _loaded_after(code: str) -> dict[str, bool]:
    """Which heavy modules a fresh interpreter holds after running ``code``."""
    report = f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    probe = f"{code}\nimport sys, json\n{report}"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_loads_no_heavy_library() -> None:
    assert not any(_loaded_after("import intake_tcia").values())


def test_exception_family_needs_no_heavy_library() -> None:
    loaded = _loaded_after("from intake_tcia import TCIAError, TCIANotFoundError")
    assert not any(loaded.values())


def test_cli_help_loads_no_heavy_library() -> None:
    code = ("import contextlib, io\nfrom intake_tcia.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['--help'])")
    assert not any(_loaded_after(code).values())


def test_client_is_imported_when_first_named() -> None:
    import intake_tcia

    assert intake_tcia.TCIAClient.__module__ == "intake_tcia.client"
    assert "TCIAClient" in dir(intake_tcia)
    with pytest.raises(AttributeError, match="no_such_name"):
        intake_tcia.no_such_name  # noqa: B018


def test_one_instance_through_tcia_loads_no_pandas_or_pyarrow(server, tmp_path) -> None:
    table = server.archive.series
    row = table[table["Modality"] == "CT"].iloc[0]
    folder = "/".join(row[["Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"]])
    sop_uid, _ = server.archive.instances(row["SeriesInstanceUID"])[0]
    code = (
        "import fsspec, pydicom\n"
        f"fs = fsspec.filesystem('tcia', api_url={server.api_url!r}, "
        f"nlst_api_url={server.nlst_api_url!r}, cache_dir={str(tmp_path)!r}, backend='nbia')\n"
        f"with fs.open({folder + '/' + sop_uid + '.dcm'!r}) as f:\n"
        f"    assert pydicom.dcmread(f).SOPInstanceUID == {sop_uid!r}"
    )
    loaded = _loaded_after(code)
    assert not loaded["pandas"] and not loaded["pyarrow"], loaded


def test_a_download_of_plain_dicom_loads_no_pydicom(server, tmp_path) -> None:
    table = server.archive.series
    uid = table[table["Modality"] == "CT"]["SeriesInstanceUID"].iloc[0]
    code = (
        "from intake_tcia.client import TCIAClient\n"
        f"client = TCIAClient(api_url={server.api_url!r}, nlst_api_url={server.nlst_api_url!r}, "
        f"cache_dir={str(tmp_path / 'cache')!r}, backend='nbia')\n"
        f"done = client.download({uid!r}, {str(tmp_path / 'dest')!r}, progress=False)\n"
        "assert done['status'].tolist() == ['downloaded'], done"
    )
    loaded = _loaded_after(code)
    assert loaded["pandas"]  # the result table
    assert not loaded["pydicom"], loaded  # every file's header walked without it

"""The bounds on what servers send are settings: keyword, environment variable, default."""

from __future__ import annotations

import pytest

from intake_tcia.config import Settings

BOUNDS = {
    "max_answer_bytes": ("INTAKE_TCIA_MAX_ANSWER_BYTES", 1 << 30, 4096),
    "max_header_bytes": ("INTAKE_TCIA_MAX_HEADER_BYTES", 16 << 20, 65536),
    "max_decompression_ratio": ("INTAKE_TCIA_MAX_DECOMPRESSION_RATIO", 200.0, 50.0),
    "min_transfer_rate": ("INTAKE_TCIA_MIN_TRANSFER_RATE", 65536.0, 1000.0),
    "idc_max_objects": ("INTAKE_TCIA_IDC_MAX_OBJECTS", 100_000, 10),
    "idc_max_listing_page_bytes": ("INTAKE_TCIA_IDC_MAX_LISTING_PAGE_BYTES", 16 << 20, 1 << 20),
    "idc_size_factor": ("INTAKE_TCIA_IDC_SIZE_FACTOR", 2.0, 1.5),
}


@pytest.mark.parametrize("name", list(BOUNDS))
def test_each_bound_has_a_default_a_variable_and_a_keyword(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable, default, other = BOUNDS[name]
    monkeypatch.delenv(variable, raising=False)
    assert getattr(Settings.from_env(), name) == default
    monkeypatch.setenv(variable, str(other))
    assert getattr(Settings.from_env(), name) == other
    assert getattr(Settings.from_env(**{name: default}), name) == default  # keyword first
    monkeypatch.setenv(variable, "lots")
    with pytest.raises(ValueError, match=variable):
        Settings.from_env()
    monkeypatch.delenv(variable)
    for bad in (0, -1) if isinstance(default, int) else (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=name):
            Settings(**{name: bad})

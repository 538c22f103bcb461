"""Fixtures of the reliability suite, and the switch between its short and long versions.

The default run has the short version; tests marked ``slow`` (the long version: 200 series, 50
processes, full-size zip bombs) are skipped unless the ``-m`` expression names ``slow``::

    pytest -m slow tests/reliability        # the long version alone
    pytest -m "slow or not slow"            # everything
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from intake_tcia.testing import ArchiveServer

from .harness import build_archive

#: Series in the short version's archive.
SHORT_SERIES = 40
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this folder's slow tests unless ``-m`` mentions ``slow``."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="the long version: run it with pytest -m slow")
    for item in items:
        if "slow" in item.keywords and _HERE in Path(item.path).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def scale_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    """A server whose archive holds :data:`SHORT_SERIES` small synthetic series more than the
    sample (``server.uids``: their UIDs) and a 1 MB series for readers (``server.load_uid``)."""
    archive, uids = build_archive(tmp_path_factory.mktemp("scale-archive"), SHORT_SERIES)
    load_uid = archive.add_synthetic_series("Reliability", "LOAD", 8, 256, 256, seed=10_000)
    with ArchiveServer(archive) as server:
        server.uids = uids  # type: ignore[attr-defined]
        server.load_uid = load_uid  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def scale(scale_server: ArchiveServer) -> Iterator[ArchiveServer]:
    """The scale server with no faults and an empty request log."""
    scale_server.reset()
    yield scale_server
    scale_server.reset()

"""Shared fixtures: the sample archive served over loopback HTTP (see intake_tcia.testing)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from intake_tcia.testing import ArchiveServer, IDCBucketServer


@pytest.fixture(autouse=True)
def nbia_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients talk to NBIA only unless a test names another backend: with the default "auto",
    a test that makes NBIA unreachable on purpose would get the IDC index's answer instead."""
    monkeypatch.setenv("INTAKE_TCIA_BACKEND", "nbia")


@pytest.fixture(scope="session")
def archive_server() -> Iterator[ArchiveServer]:
    """One sample-archive server (main + NLST hosts, DataCite) for the whole test run."""
    with ArchiveServer() as server:
        yield server


@pytest.fixture
def server(archive_server: ArchiveServer) -> Iterator[ArchiveServer]:
    """The session's server with no faults and an empty request log."""
    archive_server.reset()
    yield archive_server
    archive_server.reset()


@pytest.fixture
def tmp_cache(tmp_path: Path) -> Path:
    """An empty cache directory for one test."""
    cache = tmp_path / "cache"
    cache.mkdir()
    return cache


@pytest.fixture
def env(server: ArchiveServer, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> ArchiveServer:
    """The sample archive and a fresh cache, named only through the environment variables."""
    monkeypatch.setenv("INTAKE_TCIA_API_URL", server.api_url)
    monkeypatch.setenv("INTAKE_TCIA_NLST_API_URL", server.nlst_api_url)
    monkeypatch.setenv("INTAKE_TCIA_CACHE_DIR", str(tmp_cache))
    return server


@pytest.fixture(scope="session")
def idc_bucket_server(archive_server: ArchiveServer) -> Iterator[IDCBucketServer]:
    """The sample archive's instances in a loopback S3 bucket (IDC's keys), for the whole run."""
    with IDCBucketServer(archive_server.archive) as bucket:
        yield bucket


@pytest.fixture
def bucket(idc_bucket_server: IDCBucketServer) -> Iterator[IDCBucketServer]:
    """The session's bucket with no faults, S3's page size and an empty request log."""
    idc_bucket_server.reset()
    idc_bucket_server.sync()
    yield idc_bucket_server
    idc_bucket_server.reset()


@pytest.fixture
def idc_index(server: ArchiveServer, tmp_path: Path) -> Path:
    """An IDC index folder (idc-index-data's layout) of the sample archive's series as they are
    now; pass it as ``idc_index=`` with ``backend="idc"``."""
    from intake_tcia.testing import write_idc_index

    return write_idc_index(tmp_path / "idc-index", server.archive)


# -- an install with only some extras, played by hiding the other extras' packages ----------------

ROOT = Path(__file__).resolve().parents[1]

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


def _hidden_modules(extras: list[str]) -> list[str]:
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


@pytest.fixture(scope="session")
def hidden_modules() -> Callable[[list[str]], list[str]]:
    """``f(extras)``: the top-level modules of the optional packages an install of intake-tcia
    with those extras lacks (their dependencies kept), as installed here."""
    return _hidden_modules


#: Python code that defines ``hidden(names)``, a context in which those top-level packages cannot
#: be found (``find_spec`` gives None, ``import`` fails) nor used from ``sys.modules``: as if
#: they were not installed. Prefix it to a script run with ``python -c``.
HIDING = """
import contextlib, importlib.machinery, sys

class _Hidden:
    names = set()
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)

_where = sys.meta_path.index(importlib.machinery.PathFinder)
_hidden = sys.meta_path[_where] = _Hidden(importlib.machinery.PathFinder)

@contextlib.contextmanager
def hidden(names):
    _hidden.names = set(names)
    away = {k: sys.modules.pop(k) for k in list(sys.modules) if k.partition(".")[0] in names}
    try:
        yield
    finally:
        _hidden.names = set()
        for name, module in away.items():
            sys.modules.setdefault(name, module)
"""


@pytest.fixture(scope="session")
def hiding() -> str:
    """The code of :data:`HIDING`."""
    return HIDING

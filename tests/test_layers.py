"""The package's shape: imports run one way, with no circle, and no module is over 600 lines.

Imports are read with ``ast`` from the source (every ``import``, at any depth, ``TYPE_CHECKING``
blocks included), so a circle cannot hide behind a function-level import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "intake_tcia"
MAX_LINES = 600

#: What each part of the package may not import (prefixes of module names under intake_tcia).
#: Imports run: cli, catalog, fs -> client -> routing -> backends -> retrieval -> base modules.
_FACADES = (
    "cli", "demo", "sources", "readers", "fs", "_catalog", "_series_source", "_client_source",
    "bucket_volume",
)
_BACKENDS = ("nbia", "idc")
_ABOVE_BACKENDS = ("client", "_client_queries", "routing", *_FACADES)
FORBIDDEN = {
    "nbia": ("idc", *_ABOVE_BACKENDS),
    "idc": ("nbia", *_ABOVE_BACKENDS),
    "retrieval": (*_BACKENDS, *_ABOVE_BACKENDS),
    "routing": ("client", *_FACADES),
    "client": _FACADES,
    "_client_queries": ("client", *_FACADES),
    # map_series: the client delegates to it; its tasks get the client's class, not an import
    "cohort": (*_BACKENDS, *_ABOVE_BACKENDS),
    "backend": (*_BACKENDS, *_ABOVE_BACKENDS),
    # decoders: files in, arrays out
    "volume": (*_BACKENDS, *_ABOVE_BACKENDS),
    "segmentation": (*_BACKENDS, *_ABOVE_BACKENDS),
    "dose": (*_BACKENDS, *_ABOVE_BACKENDS),
    "nifti": (*_BACKENDS, *_ABOVE_BACKENDS),
    "_geometry": (*_BACKENDS, *_ABOVE_BACKENDS),
    "_pixels": (*_BACKENDS, *_ABOVE_BACKENDS),
    # base modules everything may use
    **{
        base: ("retrieval", *_BACKENDS, *_ABOVE_BACKENDS)
        for base in ("errors", "schema", "config", "_validate", "criteria", "citation",
                     "manifest", "_jsonrows", "_jsonframe")
    },
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The intake_tcia modules a file imports (``from . import x`` counted as module ``x``
    where ``x`` is one)."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("intake_tcia")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("intake_tcia"):
                target = node.module
            else:
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module_name(p) for p in FILES}
GRAPH = {_module_name(p): _imports(p) for p in FILES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _is_package_parent(importer: str, imported: str) -> bool:
    """A module importing its own package's ``__init__`` (or the reverse) is not a layer jump."""
    return importer.startswith(imported + ".") or imported.startswith(importer + ".")


def test_the_graph_is_read():
    assert "intake_tcia.client" in GRAPH
    assert "intake_tcia.routing" in GRAPH["intake_tcia.client"]
    assert "intake_tcia.retrieval.cache" in GRAPH["intake_tcia.retrieval.download"]


def test_no_import_circle():
    graph = {m: {i for i in deps if not _is_package_parent(m, i)} for m, deps in GRAPH.items()}
    assert _cycles(graph) == []


def test_a_circle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_run_one_way(part):
    wrong = []
    for module, deps in GRAPH.items():
        local = module.removeprefix("intake_tcia.")
        if local.split(".")[0] != part:
            continue
        for dep in deps:
            top = dep.removeprefix("intake_tcia.").split(".")[0]
            if top in FORBIDDEN[part] and top != part:
                wrong.append(f"{module} -> {dep}")
    assert wrong == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_600_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines"

"""The house runs one way: suites/ and tools/ on top of schedbench/ (the harness), on top of
kernels/ (installed as schedbench.kernels). Every import in the tree, lazy ones included, is
read from the source, so a layer that reaches up or a circle fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

FLOORS = {"kernels": 0, "schedbench": 1, "suites": 2, "tools": 2}  # tests/ may import anything


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] == "kernels":
        parts.insert(0, "schedbench")
    return ".".join(parts)


def floor(module: str) -> str:
    parts = module.split(".")
    return "kernels" if parts[:2] == ["schedbench", "kernels"] else parts[0]


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for top in (*FLOORS, "tests") for p in (ROOT / top).rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports: for ``from package import name``, the submodule
    where ``name`` is one, else the package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known.keys()
            found |= subs or ({node.module} & known.keys())
    return found


def graph() -> dict[str, set[str]]:
    known = project_modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_no_floor_imports_one_above_it():
    up = [(a, b) for a, targets in graph().items() for b in targets
          if floor(a) in FLOORS and floor(b) in FLOORS and FLOORS[floor(b)] > FLOORS[floor(a)]]
    assert up == []


def test_nothing_but_tests_imports_the_tests():
    assert [(a, b) for a, targets in graph().items() for b in targets
            if floor(b) == "tests" and floor(a) != "tests"] == []


def test_the_import_graph_has_no_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_the_graph_reads_real_imports():
    """The checks above would pass on an empty graph: it must hold the edges we know."""
    edges = graph()
    assert "schedbench.kernels.registry" in edges["schedbench.sweep"]
    assert "schedbench.kernels.cpu.backend" in edges["schedbench.kernels.registry"]
    assert "schedbench.kernels.devices" in edges["schedbench.kernels.cpu.backend"]

"""The package architecture holds: the layers written in pyproject.toml, and no import cycle between modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def _graph() -> grimp.ImportGraph:
    sys.path[:0] = [str(ROOT / "search")]
    try:
        return grimp.build_graph("lrsearch", cache_dir=None)
    finally:
        del sys.path[0]


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Each cycle of direct imports between lrsearch's modules, found by a depth-first search."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                cycles.append(path[path.index(imported) :] + [imported])
            elif imported not in state:
                visit(imported)
        path.pop()
        state[module] = 2

    for module in sorted(graph.modules):
        if module not in state:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others() -> None:
    assert import_cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    graph.add_import(importer="a.z", imported="a.x")
    assert import_cycles(graph) == [["a.x", "a.y", "a.z", "a.x"]]


def test_packages_import_only_downwards() -> None:
    """The layers contract in pyproject.toml ([tool.importlinter]), checked by import-linter itself."""
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(linter), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT / 'search'}:{ROOT / 'objectives'}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout

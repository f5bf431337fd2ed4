"""The house: no import circle among visionsweep's modules, and the top level only imports downwards
(visionsweep, the public Python API -> scheduler -> serving -> trainers; cluster beside them).

Read from the source with ``ast`` (nothing is imported): every ``import`` and ``from ... import`` of a project
module, at module level or inside a function, is an edge (an import inside a function still ties the two
modules together; it only hides the circle until the function runs). A module importing its own package's
``__init__`` is not counted, nor is an import under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("visionsweep", "scheduler", "trainers", "serving", "cluster")
# what each top-level package may import (besides itself)
ALLOWED = {"visionsweep": {"scheduler", "trainers", "serving", "cluster"},
           "scheduler": {"trainers", "serving", "cluster"}, "serving": {"trainers", "cluster"},
           "trainers": set(), "cluster": {"trainers"}}


def _modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for p in (ROOT / top).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        tree = ast.parse(p.read_text())
        skip = {id(n) for stmt in tree.body if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test)
                for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[m] |= {t for t in targets if t in mods and t != m and not m.startswith(t + ".")}
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_in_a_circle():
    assert _circles(_edges(_modules())) == []


def test_the_top_level_packages_import_downwards_only():
    wrong = sorted(f"{a} -> {b}" for a, bs in _edges(_modules()).items() for b in bs
                   if a.split(".")[0] != b.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]])
    assert wrong == []


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

"""The package's import graph (every import statement, inside functions too): no cycle, and no module that climbs
back up to a package containing it (``from . import x`` in a submodule), so each layer can be read on its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rlsft"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the rlsft modules it imports}; ``from pkg import name`` counts as importing ``pkg.name`` when that
    is a module, else ``pkg`` itself."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(up + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in files:
                        deps.add(f"{target}.{alias.name}")
                    elif target in files:
                        deps.add(target)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(module, package containing it that it imports)."""
    return sorted((m, d) for m, deps in graph.items() for d in deps if m.startswith(d + "."))


def test_no_import_cycle_and_no_upward_import():
    graph = import_graph()
    assert "rlsft.training.derived" in graph and "rlsft.models" in graph["rlsft.training.derived"]
    assert cycles(graph) == []
    assert upward(graph) == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """On a planted package: a two-module cycle through a function-level import, and a submodule importing its own
    package."""
    pkg = tmp_path / "rlsft"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n")
    (pkg / "sub" / "__init__.py").write_text("X = 1\n")
    (pkg / "sub" / "c.py").write_text("from . import X\nfrom .. import a\n")
    graph = import_graph(pkg)
    assert cycles(graph) == [["rlsft.a", "rlsft.b"]]
    assert upward(graph) == [("rlsft.sub.c", "rlsft.sub")]

"""The house rules of the package's layout (docs: the API reference's overview), read from the source's imports.

- ``kd_probe.core`` is pure torch: it imports no Lightning.
- Nothing outside ``kd_probe.apps`` imports ``kd_probe.apps`` (but ``python -m kd_probe``, whose ``__main__`` is the
  command).
- ``kd_probe.apps`` uses the library through its public modules: it imports no ``_``-prefixed module outside
  ``kd_probe.apps``.
- No import cycle inside ``kd_probe``, counting every import: at module level, inside functions and under
  ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kd_probe"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The ``kd_probe`` modules that module ``name`` imports anywhere in its text: ``from a.b import c`` counts as
    ``a.b.c`` when that is a module, else as ``a.b``; relative imports are resolved."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {module for module in found if module == "kd_probe" or module.startswith("kd_probe.")}


GRAPH = {name: imports(name) for name in MODULES}


def test_the_graph_is_read() -> None:
    assert "kd_probe.core.sigma" in GRAPH["kd_probe.callbacks.knowledge_points"]
    assert "kd_probe.apps.cli" in GRAPH["kd_probe.__main__"]
    assert len(MODULES) > 80


def test_core_imports_no_lightning() -> None:
    offenders = {}
    for name, path in MODULES.items():
        if name.startswith("kd_probe.core"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                modules = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                bad = [m for m in modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "torchmetrics")]
                if bad:
                    offenders[name] = bad
    assert not offenders, f"kd_probe.core must be pure torch, but imports {offenders}"


def test_nothing_outside_apps_imports_apps() -> None:
    offenders = {
        name: sorted(m for m in imported if m.startswith("kd_probe.apps"))
        for name, imported in GRAPH.items()
        if not name.startswith("kd_probe.apps") and name != "kd_probe.__main__"
    }
    offenders = {name: found for name, found in offenders.items() if found}
    assert not offenders, f"only kd_probe.apps (and python -m kd_probe) may import the apps: {offenders}"


def test_apps_import_only_public_library_modules() -> None:
    offenders = {
        name: sorted(
            m for m in imported if not m.startswith("kd_probe.apps") and any(p.startswith("_") for p in m.split("."))
        )
        for name, imported in GRAPH.items()
        if name.startswith("kd_probe.apps")
    }
    offenders = {name: found for name, found in offenders.items() if found}
    assert not offenders, f"the apps use the library's public modules only: {offenders}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    assert not cycles(GRAPH), f"import cycles inside kd_probe: {cycles(GRAPH)}"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"a"}}, [["a"]]),
    ],
)
def test_the_cycle_finder(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected

"""The layout's rules, read from the source: layers import only downward, no module imports
another that imports it back (also through ``TYPE_CHECKING``), no function-local imports of
the project's own modules, nothing imports the old top-level names."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("health", "policies", "supervisor", "migrations")
# what each layer may import of the others (trainwarden/ itself, the package root, is above all)
ALLOWED = {
    "health": {"health"},
    "policies": {"health", "policies"},
    "supervisor": {"health", "policies", "supervisor", "migrations"},
    "migrations": {"supervisor", "migrations"},
}


def _modules() -> dict[str, Path]:
    out = {"trainwarden": REPO / "trainwarden" / "__init__.py"}
    out["trainwarden.cli"] = REPO / "trainwarden" / "cli.py"
    for layer in LAYERS:
        for path in sorted((REPO / layer).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(("trainwarden", *parts))] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(tree: ast.AST) -> Iterator[tuple[str, bool, int]]:
    """(imported module, at module level, line) for every import of the project's own."""

    def walk(node: ast.AST, top: bool) -> Iterator[tuple[str, bool, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, False)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, top, child.lineno
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    # `from pkg import submodule` depends on the submodule
                    yield (full if full in MODULES else child.module), top, child.lineno
            yield from walk(child, top)

    yield from walk(tree, True)


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    local: list[str] = []
    for mod, path in MODULES.items():
        for name, top, line in _imports(ast.parse(path.read_text())):
            target = _resolve(name) if name.startswith("trainwarden") else None
            if target is None or target == mod:
                continue
            # a package's own __init__ is not a dependency of its submodules' imports
            if mod.startswith(target + "."):
                continue
            graph[mod].add(target)
            if not top:
                local.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    return graph, local


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_no_function_local_imports_of_our_own_modules() -> None:
    _, local = _graph()
    assert local == []


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_only_downward(layer: str) -> None:
    graph, _ = _graph()
    wrong = sorted(
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if mod.startswith(f"trainwarden.{layer}")
        for dep in deps
        if dep != "trainwarden" and dep.split(".")[1] not in ALLOWED[layer]
    )
    assert wrong == []


def test_nothing_imports_the_old_top_level_names() -> None:
    old = []
    for path in [*MODULES.values(), *REPO.glob("tests/**/*.py"), *REPO.glob("bench/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            old += [
                f"{path.relative_to(REPO)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in LAYERS
            ]
    assert old == []


def test_the_package_root_links_every_layer() -> None:
    for layer in LAYERS:
        link = REPO / "trainwarden" / layer
        assert link.is_symlink() and link.resolve() == (REPO / layer).resolve()

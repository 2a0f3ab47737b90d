"""The package map in the README, enforced: who may import whom, and no import cycle between the project's modules.

Imports are read with `ast` from every file of the project's packages, wherever they stand (module level, inside a
function, under `if __name__ == "__main__":`), so a lazy import cannot hide a loop or a forbidden dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("settings", "retrieval", "model_store", "feedback_store", "app", "evaluation", "training")
ENTRY_POINTS = {"app.cli", "app.__main__"}  # the `ragqa` wiring may import every package

# package -> the project packages it may import (besides itself); the README's "Package map" says why.
MAY_IMPORT: dict[str, set[str]] = {
    "settings": set(),
    "retrieval": {"settings", "model_store.hardware"},  # the embedder picks its dtype and threads there
    "model_store": {"settings", "retrieval.prompt"},
    "feedback_store": {"settings", "retrieval"},
    "app": {"settings", "retrieval", "model_store", "feedback_store"},
    "evaluation": {"settings", "retrieval", "model_store", "feedback_store", "app"},
    "training": {"settings", "retrieval", "model_store", "feedback_store", "evaluation.metrics"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if "tests" not in p.parts
    }


def imported_names(path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every project module `path` imports (a `from pkg import sub` names the submodule when it is one)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != this:
                yield name


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: set(imported_names(path, modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# Known exception, to remove: `ragqa retrain` reads the CPU-share policy (server_cores, background_nice) from the
# app's config.yaml. The policy belongs in settings/ (one config.yaml schema shared by app and training).
EXCEPTIONS = {
    ("training.commands", "app.config"),
}


def allowed(importer: str, imported: str) -> bool:
    package, target = importer.split(".")[0], imported.split(".")[0]
    if package == target or importer in ENTRY_POINTS or (importer, imported) in EXCEPTIONS:
        return True
    return any(imported == rule or imported.startswith(rule + ".") for rule in MAY_IMPORT[package])


def test_the_graph_sees_lazy_imports() -> None:
    """A function-level import counts (the CLI imports its command groups lazily)."""
    graph = import_graph()
    assert "training.commands" in graph["app.cli"] and "model_store.registry" in graph["app.generator"]


def test_no_import_cycles_between_the_projects_modules() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_the_map_allows(package: str) -> None:
    graph = import_graph()
    wrong = sorted(
        f"{importer} -> {imported}"
        for importer, targets in graph.items()
        if importer.split(".")[0] == package
        for imported in targets
        if not allowed(importer, imported)
    )
    assert wrong == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

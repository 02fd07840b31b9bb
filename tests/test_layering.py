"""The package's layering, enforced: no import cycle, no layer importing a higher one, no private name imported
across modules. Pure AST analysis of ``oneiric_memory/`` (nothing is imported, nothing runs).

Layers, lowest first (docs/architecture.md):
    0 ground floor   errors, records, settings (+ settings_sources), observability, protocols, insights, version
    1 adapters       adapters.* (the pgvector store package, embedders, the Session-Buddy sink, the catalog of
                     adapter candidates), migrations.*
    2 core           coordinator (+ outbox relay, backfill), ops.*, evaluation, demo, rag.* (repository ingestion)
    3 entry points   cli.*, mcp.*, plugin, mahavishnu, testing.*, integrations.* (LlamaIndex, LangChain), and the
                     package root (the public API)
A new module must be given a layer in ``LAYERS`` below: the test fails until it is.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "oneiric_memory"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (0, ("errors", "records", "settings", "settings_sources", "observability", "protocols", "insights", "version")),
    (1, ("adapters", "migrations")),
    (2, ("coordinator", "outbox", "backfill", "ops", "evaluation", "demo", "rag")),
    (3, ("cli", "mcp", "plugin", "mahavishnu", "testing", "integrations")),
)
LAYER_NAMES = {0: "ground floor", 1: "adapters", 2: "coordinator & ops", 3: "entry points"}


@dataclass(frozen=True, slots=True)
class Import:
    source: str  # importing module
    target: str  # imported module
    names: tuple[str, ...]  # names taken from it (``from target import a, b``); empty for ``import target``
    line: int
    typing_only: bool  # under ``if TYPE_CHECKING:`` (not executed at run time)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py")) if "versions" not in path.parts}


def layer_of(module: str) -> int | None:
    if module == PACKAGE:
        return 3  # the root re-exports the user API from every layer
    first = module.removeprefix(PACKAGE + ".").split(".")[0]
    for layer, prefixes in LAYERS:
        if first in prefixes:
            return layer
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, typing_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    yield from visit_statement(statement, True)
                for statement in child.orelse:
                    yield from visit_statement(statement, typing_only)
                continue
            yield from visit_statement(child, typing_only)

    def visit_statement(node: ast.AST, typing_only: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield Import(module, alias.name, (), node.lineno, typing_only)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                return
            plain: list[str] = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:  # ``from oneiric_memory import insights`` imports a module
                    yield Import(module, submodule, (), node.lineno, typing_only)
                else:
                    plain.append(alias.name)
            if plain:
                yield Import(module, base, tuple(plain), node.lineno, typing_only)
        else:
            yield from visit(node, typing_only)

    yield from visit(tree, False)


def all_imports() -> list[Import]:
    known = modules()
    return [found for module, path in known.items() for found in imports_of(module, path, set(known))]


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (or a self-import), via Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return cycles


def test_every_module_has_a_layer() -> None:
    unassigned = [module for module in modules() if layer_of(module) is None]
    assert not unassigned, f"give these modules a layer in tests/test_layering.py LAYERS: {unassigned}"


def test_no_import_cycle_inside_the_package() -> None:
    edges: dict[str, set[str]] = {}
    for found in all_imports():
        if not found.typing_only and found.target != found.source:
            edges.setdefault(found.source, set()).add(found.target)
    assert find_cycles(edges) == []


def test_no_layer_imports_a_higher_layer() -> None:
    violations = []
    for found in all_imports():
        source, target = layer_of(found.source), layer_of(found.target)
        if source is not None and target is not None and target > source:
            violations.append(f"{found.source}:{found.line} ({LAYER_NAMES[source]}) imports {found.target} "
                              f"({LAYER_NAMES[target]})")
    assert violations == []


def test_no_private_name_is_imported_across_modules() -> None:
    violations = []
    for found in all_imports():
        private = [name for name in found.names if name.startswith("_") and not name.startswith("__")]
        if private:
            violations.append(f"{found.source}:{found.line} imports {private} from {found.target}")
        last = found.target.rpartition(".")[2]
        owner = found.target.rpartition(".")[0]
        inside = found.source == owner or found.source.startswith(owner + ".")
        if last.startswith("_") and not last.startswith("__") and not inside:
            violations.append(f"{found.source}:{found.line} imports the private module {found.target} from "
                              "outside its package")
    assert violations == []


# --- the checker itself (so a broken checker cannot pass silently) ---------------------------------------


def test_the_cycle_finder_finds_a_cycle_and_ignores_a_chain() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}}) == []


@pytest.mark.parametrize(("module", "layer"), [
    ("oneiric_memory.errors", 0), ("oneiric_memory.adapters.pgvector.store", 1), ("oneiric_memory.ops.maintenance", 2),
    ("oneiric_memory.adapters.pgvector.search", 1), ("oneiric_memory.adapters.catalog", 1),
    ("oneiric_memory.adapters.embedders.prefixed", 1), ("oneiric_memory.plugin", 3),
    ("oneiric_memory.coordinator", 2), ("oneiric_memory.cli", 3), ("oneiric_memory", 3), ("oneiric_memory.nowhere", None),
])
def test_layers_are_assigned_by_the_first_name_under_the_package(module: str, layer: int | None) -> None:
    assert layer_of(module) == layer


def test_imports_are_read_from_the_real_sources() -> None:
    found = all_imports()
    targets = {(i.source, i.target) for i in found}
    assert ("oneiric_memory.ops.maintenance", "oneiric_memory.adapters.pgvector") in targets
    typing = {(i.source, i.target) for i in found if i.typing_only}
    assert ("oneiric_memory.adapters.pgvector.gauges", "oneiric_memory.adapters.pgvector.store") in typing
    # the store owns its search executor; the executor names the store for typing only (no cycle)
    assert ("oneiric_memory.adapters.pgvector.store", "oneiric_memory.adapters.pgvector.search") in targets
    assert ("oneiric_memory.adapters.pgvector.search", "oneiric_memory.adapters.pgvector.store") in typing


def test_the_adapter_candidates_are_listed_once_and_both_registrations_read_that_list() -> None:
    """adapters.catalog sits below the coordinator and the plugin, so both can read it (issue 11: one list)."""
    readers = {i.source for i in all_imports()
               if i.target == "oneiric_memory.adapters.catalog" and "ADAPTERS" in i.names}
    assert {"oneiric_memory.coordinator", "oneiric_memory.plugin"} <= readers
    assert layer_of("oneiric_memory.adapters.catalog") < min(layer_of(r) or 0 for r in readers)

"""The layering of jbot, read from the source with ``ast``: nothing of jbot is imported here.

Layers (docs/ARCHITECTURE.md): the engine (arrays and tensors in and out) at the bottom; the adapters
``jbot/tracking/`` (the one home of mlflow) and ``jbot/sweeps/`` (the one home of optuna); one module per command
in ``jbot/commands/``; ``jbot/cli.py`` (typer) on top.

Two kinds of rule:

- who may import what. Every import counts here, wherever it sits: at module level, inside a function (a lazy
  import still ties the engine to the library at run time) or under ``if TYPE_CHECKING:`` (the engine defines
  the interfaces it needs instead of borrowing an adapter's);
- no import cycle among jbot's modules, counting only what runs when a module is imported: module-level imports,
  not those inside functions or under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "jbot"

# The engine: no mlflow, no optuna, no typer, and none of the layers above it. The rule also holds for every other
# jbot module the engine imports (a helper outside these folders is engine too once the engine uses it).
ENGINE = (
    "jbot.model", "jbot.ssl", "jbot.data", "jbot.evaluate", "jbot.anomaly", "jbot.train",
    "jbot.config", "jbot.errors", "jbot.io", "jbot.paths", "jbot.signals", "jbot.redaction", "jbot.plots",
)
ABOVE_ENGINE = ("jbot.tracking", "jbot.sweeps", "jbot.commands", "jbot.cli")

# Each of these libraries is imported by its owner and nowhere else (commands use the adapters, not the libraries).
# optuna: the Optuna adapter and the sweep command, whose objectives are Optuna's callbacks
OWNERS: dict[str, tuple[str, ...]] = {"mlflow": ("jbot.tracking",),
                                      "optuna": ("jbot.sweeps", "jbot.commands.sweep", "jbot.commands.sweep_kinds"),
                                      "typer": ("jbot.cli",)}

# Parts of the layout that must exist, so that no rule passes because its folder was renamed away.
REQUIRED = (*ENGINE, "jbot.tracking", "jbot.sweeps", "jbot.cli")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "jbot.train.pretrain"
    target: str  # what it imports, resolved: "jbot.train.graphs", "mlflow.entities", "torch"
    line: int
    at_import_time: bool  # module level and not under `if TYPE_CHECKING:`

    def where(self) -> str:
        path = module_files().get(self.module)
        return f"{path.relative_to(ROOT) if path is not None else self.module}:{self.line}"


def within(name: str, prefix: str) -> bool:
    """``name`` is ``prefix`` or lies under it (``jbot.data.splits`` is within ``jbot.data``)."""
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def module_files() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    files = (p for p in (ROOT / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts)
    return {module_name(p): p for p in sorted(files)}


def path_of(module: str) -> str:
    """The file of a module, or the folder of a package (``jbot/tracking/``)."""
    path = module_files().get(module)
    if path is None:
        return module
    return f"{path.parent.relative_to(ROOT)}/" if path.name == "__init__.py" else str(path.relative_to(ROOT))


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _base_of(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` reads from (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def imports_in(source: str, module: str, is_package: bool = False,
               known: frozenset[str] | None = None) -> list[Import]:
    """The imports of one module's source. ``from a import b`` names the module ``a.b`` when ``known`` (the
    modules of the package) holds it, else ``a``."""
    known = frozenset(module_files()) if known is None else known
    found: list[Import] = []

    def targets(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
            return
        base = _base_of(node, module, is_package)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            yield sub if sub in known else base

    def visit(node: ast.AST, at_import_time: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in dict.fromkeys(targets(child)):
                    found.append(Import(module, target, child.lineno, at_import_time))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)  # runs when called, not when the module is imported
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), at_import_time)
            else:
                visit(child, at_import_time)  # class bodies, try/with/if blocks run at import

    visit(ast.parse(source), True)
    return found


@cache
def all_imports() -> tuple[Import, ...]:
    out: list[Import] = []
    for module, path in module_files().items():
        out.extend(imports_in(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"))
    return tuple(out)


def _listing(found: list[Import]) -> str:
    return "\n  ".join(f"{imp.where()} imports {imp.target}"
                       + ("" if imp.at_import_time else " (inside a function or under TYPE_CHECKING)")
                       for imp in found)


# ----------------------------------------------------------------------------------------------- the parser


def test_parser_reads_every_kind_of_import() -> None:
    source = (
        "from __future__ import annotations\n"
        "import os, mlflow.entities\n"
        "from typing import TYPE_CHECKING\n"
        "from jbot.data import splits\n"
        "from jbot.data.classes import CLASSES\n"
        "from . import sibling\n"
        "from ..io import atomic_write\n"
        "if TYPE_CHECKING:\n"
        "    from jbot.train.pretrain import Pretrainer\n"
        "else:\n"
        "    import numpy\n"
        "try:\n"
        "    import torch\n"
        "except ImportError:\n"
        "    torch = None\n"
        "class A:\n"
        "    import h5py\n"
        "def f():\n"
        "    import optuna\n"
        "    g = lambda: __import__('x')\n"
    )
    known = frozenset({"jbot", "jbot.data", "jbot.data.splits", "jbot.data.classes", "jbot.data.sibling",
                       "jbot.io", "jbot.train.pretrain"})
    found = {(i.target, i.at_import_time) for i in imports_in(source, "jbot.data.here", known=known)}
    assert found == {
        ("__future__", True), ("os", True), ("mlflow.entities", True), ("typing", True),
        ("jbot.data.splits", True), ("jbot.data.classes", True), ("jbot.data.sibling", True), ("jbot.io", True),
        ("jbot.train.pretrain", False), ("numpy", True), ("torch", True), ("h5py", True), ("optuna", False),
    }
    # relative imports in a package's __init__ start from the package itself
    in_init = imports_in("from .classes import CLASSES\n", "jbot.data", is_package=True, known=known)
    assert [i.target for i in in_init] == ["jbot.data.classes"]


def test_the_layout_is_there() -> None:
    """Every layer named in the rules exists (a renamed folder would make its rules pass vacuously)."""
    modules = module_files()
    missing = [name for name in REQUIRED if not any(within(m, name) for m in modules)]
    assert not missing, f"the layering rules name modules that do not exist: {', '.join(missing)}"


# ------------------------------------------------------------------------------------------- who imports what


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_library_has_one_owner(library: str) -> None:
    owners = OWNERS[library]
    found = [imp for imp in all_imports()
             if within(imp.target, library) and not any(within(imp.module, o) for o in owners)]
    assert not found, (f"only {', '.join(map(path_of, owners))} may import {library}; these modules import it too "
                       f"(go through {', '.join(owners)} instead):\n  {_listing(found)}")


def engine_modules() -> dict[str, str | None]:
    """The engine: its listed modules and every jbot module they import (at any place, transitively), short of the
    layers above it (an import of those is a violation of its own). Module -> the module it was reached from
    (None: listed)."""
    modules = module_files()
    imported: dict[str, set[str]] = {m: set() for m in modules}
    for imp in all_imports():
        if imp.target in modules:
            imported[imp.module].add(imp.target)
    reached: dict[str, str | None] = {m: None for m in modules if any(within(m, layer) for layer in ENGINE)}
    todo = list(reached)
    while todo:
        module = todo.pop()
        for target in sorted(imported[module]):
            if target not in reached and not any(within(target, layer) for layer in ABOVE_ENGINE):
                reached[target] = module
                todo.append(target)
    return reached


def test_engine_closure_is_computed() -> None:
    engine = engine_modules()
    assert "jbot.model.encoder" in engine and engine["jbot.model.encoder"] is None
    assert not any(within(m, layer) for m in engine for layer in ABOVE_ENGINE)


@pytest.mark.parametrize("forbidden", [*OWNERS, *ABOVE_ENGINE])
def test_engine_does_not_import(forbidden: str) -> None:
    engine = engine_modules()
    found = [imp for imp in all_imports() if imp.module in engine and within(imp.target, forbidden)]

    def via(module: str) -> str:
        chain = []
        while engine[module] is not None:
            module = engine[module]  # type: ignore[assignment]
            chain.append(module)
        return f" [engine through {' <- '.join(chain)}]" if chain else ""

    lines = "\n  ".join(f"{_listing([imp])}{via(imp.module)}" for imp in found)
    assert not found, (f"the engine ({', '.join(ENGINE)}) must not import {forbidden}; these do "
                       f"(pass what the engine needs in as an argument, or define the interface in the "
                       f"engine):\n  {lines}")


def test_nothing_imports_the_cli() -> None:
    """``jbot/cli.py`` is the top: declarations and printing, imported by nothing in the package."""
    found = [imp for imp in all_imports() if within(imp.target, "jbot.cli") and not within(imp.module, "jbot.cli")]
    assert not found, f"jbot.cli is imported by:\n  {_listing(found)}"


# ------------------------------------------------------------------------------------------------- cycles


def import_graph() -> dict[str, dict[str, int]]:
    """jbot module -> {jbot module it imports when imported: line of the first such import}."""
    modules = module_files()
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for imp in all_imports():
        if imp.at_import_time and imp.target in modules:
            graph[imp.module].setdefault(imp.target, imp.line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                components.append(sorted(component))
    return components


def cycle_through(start: str, component: set[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest import path from ``start`` back to itself inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in graph[node]:
                if child not in component:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # unreachable for a component with a cycle


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    cycles = []
    for component in strongly_connected(graph):
        if len(component) > 1 or component[0] in graph[component[0]]:
            cycles.append(cycle_through(component[0], set(component), graph))
    return cycles


def test_cycle_finder() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}, "f": {"a": 6}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = find_cycles(graph)

    def described(cycle: list[str]) -> str:
        steps = " -> ".join(cycle)
        edges = "; ".join(f"{module_files()[a].relative_to(ROOT)}:{graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:], strict=False))
        return f"{steps}\n      ({edges})"

    assert not cycles, ("import cycles among jbot's modules (module-level imports; move one import into the "
                        "function that needs it, put it under TYPE_CHECKING, or move the shared piece down a "
                        "layer):\n  " + "\n  ".join(described(c) for c in cycles))

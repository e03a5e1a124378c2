"""The floor plan, enforced: the package's import graph (module level and inside functions)
has no cycle, and concerns talk through their facades.

A short AST walk of our own instead of import-linter: the package is mapped from the card's
folders (pyproject's package-dir), which import-linter cannot follow without installing, and
function-level imports, where the last cycles hid, count here like module-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FOLDERS = {"handlers": "torchserve_cpu.handlers", "launcher": "torchserve_cpu.launcher",
           "model_store": "torchserve_cpu.model_store"}
#: sub-packages whose modules others reach only through the sub-package's __init__
FACADES = ("torchserve_cpu.launcher.host", "torchserve_cpu.launcher.planning",
           "torchserve_cpu.launcher.torchserve", "torchserve_cpu.handlers.optimize",
           "torchserve_cpu.handlers.archive", "torchserve_cpu.handlers.tasks")
P = "torchserve_cpu."
#: (importer prefix, imported prefix, why it is forbidden); prefixes after torchserve_cpu.
FORBIDDEN = (
    ("launcher.host", "launcher.planning", "facts sit below plans"),
    ("launcher.host", "launcher.torchserve", "facts sit below TorchServe's side"),
    ("launcher.planning", "launcher.torchserve", "plans are pure: TorchServe's side applies"),
    *((f"launcher.{part}", "handlers", "the launcher serves any handler")
      for part in ("host", "planning", "torchserve", "doctor", "resources", "errors")),
    *((f"launcher.{part}", "model_store", "the demo store is not the product")
      for part in ("host", "planning", "torchserve", "doctor", "resources", "errors")),
    ("handlers", "model_store", "the demo store is not the product"),
    ("handlers", "launcher.planning", "workers read host facts, not plans"),
    ("handlers", "launcher.cli", "the command sits above both"),
    ("handlers", "launcher.doctor", "the command sits above both"),
    ("handlers.optimize", "handlers.archive", "serving never builds at archive time"),
)


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if any(part in ("build",) or not part.isidentifier() for part in parts[:-1]):
                continue  # model_store/build/ holds built archives, not code
            found[".".join((package, *parts))] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Package modules `name` imports anywhere in its file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            # `from pkg import mod` imports the module pkg.mod, not only pkg's __init__
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        edges |= {target for target in targets if target in known and target != name}
    return edges


GRAPH = {name: imports(path, name, set(modules())) for name, path in modules().items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_walk_sees_the_package() -> None:
    """Guards the guard: the walk finds the modules and edges it should."""
    assert {"torchserve_cpu.launcher.host.procfs", "torchserve_cpu.handlers.optimize.pipeline",
            "torchserve_cpu.handlers.tasks.image", "torchserve_cpu.launcher.cli"} <= set(GRAPH)
    assert "torchserve_cpu.launcher.host" in GRAPH["torchserve_cpu.launcher.planning.planner"]
    # a function-level import counts
    assert "torchserve_cpu.handlers.tasks.image" in GRAPH["torchserve_cpu.handlers.tasks"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("facade", FACADES)
def test_concerns_meet_at_facades(facade: str) -> None:
    reaching_in = sorted(
        f"{importer} -> {target}"
        for importer, targets in GRAPH.items() if not inside(importer, facade)
        for target in targets if inside(target, facade) and target != facade)
    assert reaching_in == [], f"import {facade}'s names from {facade} itself"


@pytest.mark.parametrize(("importer", "imported", "why"), FORBIDDEN)
def test_layers(importer: str, imported: str, why: str) -> None:
    crossing = sorted(f"{source} -> {target}" for source, targets in GRAPH.items()
                      if inside(source, P + importer) for target in targets
                      if inside(target, P + imported))
    assert crossing == [], why


def test_no_test_module_leaves_stand_in_packages_behind() -> None:
    """A stand-in module put in sys.modules at collection (a fake torchvision, with no
    __spec__) broke every transformers-based test collected after it; stand-ins belong to
    the worker that imports them."""
    import sys

    for name in ("torchvision", "captum"):
        module = sys.modules.get(name)
        assert module is None or getattr(module, "__spec__", None) is not None, name

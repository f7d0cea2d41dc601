"""The library's layers (docs/architecture.md): each imports only the layers below it, and nothing cycles.

Read from the source with `ast` (imports inside functions count too), so a new upward import or
cycle fails here before it can become a circular-import error at run time.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from helpers import REPO

FRAMEWORK = REPO / "framework"
# Lowest first. A module may import its own layer and the layers below it.
LAYERS = ["core", "data", "io", "evaluate", "train", "recipe", "runner", "__init__"]
TASK_PACKAGES = {"text", "image", "recipes"}  # the recipes' own code; the library never imports it


def _module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return LAYERS.index("__init__")
    return LAYERS.index(parts[1])


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names), at any depth in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the framework modules it imports, for the `framework` package under `root`."""
    modules = {_module_name(p, root): p for p in (root / "framework").rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_every_module_belongs_to_a_layer():
    for name in _graph():
        assert name == "framework" or name.split(".")[1] in LAYERS, f"{name} is in no layer of {LAYERS}"


def test_no_module_imports_a_layer_above_its_own():
    upward = [(name, dep) for name, deps in _graph().items() for dep in deps if _layer(dep) > _layer(name)]
    assert upward == [], "upward imports (importer, imported): " + repr(upward)


def test_the_library_never_imports_a_recipe():
    for path in FRAMEWORK.rglob("*.py"):
        task = {m for m in _imports(path) if m.split(".")[0] in TASK_PACKAGES}
        assert not task, f"{path.relative_to(REPO)} imports recipe code {sorted(task)}"


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_checks_see_a_violation(tmp_path):
    """The contract above could fail: an upward import planted in a copy of the package (never in the source tree:
    an interrupted test would leave it there) is found."""
    shutil.copytree(FRAMEWORK, tmp_path / "framework", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "framework" / "core" / "_planted_for_test.py").write_text("from framework.train.loop import fit\n")
    graph = _graph(tmp_path)
    assert "framework.train.loop" in graph["framework.core._planted_for_test"]
    assert any(_layer(dep) > _layer(name) for name, deps in graph.items() for dep in deps)


def test_no_function_of_the_library_or_the_recipes_is_longer_than_sixty_lines():
    long = []
    for path in [*FRAMEWORK.rglob("*.py"), *(REPO / "recipes").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not long, long


def test_the_recipe_module_is_the_contract_only():
    assert len((FRAMEWORK / "recipe.py").read_text().splitlines()) <= 200

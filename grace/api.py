"""Grace from Python: the same search, stats, task submission and routing stats as the CLI, for a manifest file.

from grace.api import search, submit, task
for hit in search("what changed in the Q3 numbers", k=3):
    print(hit.score, hit.path, hit.text)
task_id = submit({"type": "search", "origin": "notebook", "payload": {"query": "Q3 numbers"}})
print(task(task_id)["status"])
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from grace.core.index_config import SearchMode
from grace.core.manifest import Manifest
from grace.core.search_filter import SearchFilter
from grace.resources.index.search import Searcher, SearchHit, index_stats
from grace.resources.store.store import Store
from grace.resources.tasks.project_handlers import accept_task, accept_task_json, load_routed_manifest
from grace.resources.wiring.services import open_searcher


class NoInstance(Exception):
    """The Dagster home holds no dagster.yaml, or one Dagster cannot load: there is no run queue to read."""


def searcher(config: str | Path | None = None) -> Searcher:
    """A Searcher over the services a manifest wires ($GRACE_CONFIG or ./grace.yaml by default)."""
    return open_searcher(load_routed_manifest(config))


def search(
    query: str, k: int = 5, config: str | Path | None = None, mode: SearchMode | None = None, **filters: Any
) -> list[SearchHit]:
    """The k best chunks for the query across every shard, best first, ranked as mode says: hybrid (dense
    and lexical results fused), dense or lexical; grace.yaml's search.mode by default.

    filters are SearchFilter's fields (source, path, type, modified_after, modified_before, page,
    heading): only chunks that pass every one are returned, k of them whenever k exist. A ValueError
    names an unknown mode or a bad filter (pydantic's ValidationError, or UnknownSource).

    Lone surrogates (undecodable bytes from argv or a file name) become U+FFFD, with a UnicodeWarning.
    """
    return searcher(config).search(query, k, mode, SearchFilter(**filters) if filters else None)


def stats(config: str | Path | None = None) -> dict:
    """total_embeddings, indexed_embeddings, pending, tombstoned, index_coverage, per shard and in total."""
    found = searcher(config)
    return index_stats(found.store, found.index, found.embedder.model_id)


def submit(task: dict[str, Any] | str | bytes, config: str | Path | None = None, via: str = "api") -> str:
    """Accept a task (a dict, or a task or seed-intent document as JSON text) into the store; its task id.

    Raises grace.core.task_model.TaskRejected (DuplicateTask for a taken task_id) naming every problem.
    The route_tasks sensor turns it into a Dagster run.
    """
    manifest = load_routed_manifest(config)
    accepted = accept_task_json(task, manifest) if isinstance(task, str | bytes) else accept_task(task, manifest)
    store = Store(manifest.store_url)
    try:
        store.tasks.add(accepted, via)
    finally:
        store.dispose()
    return accepted.task_id


def task(task_id: str, config: str | Path | None = None) -> dict[str, Any] | None:
    """A task as the store holds it (status, run id, times, queue wait, run time, sla_met, result); None if unknown."""
    store = Store(load_routed_manifest(config).store_url)
    try:
        record = store.tasks.get(task_id)
    finally:
        store.dispose()
    return record.as_dict() if record is not None else None


def tasks(statuses: list[str], limit: int = 50, config: str | Path | None = None) -> list[dict[str, Any]]:
    """Tasks in these statuses, oldest first."""
    store = Store(load_routed_manifest(config).store_url)
    try:
        return [record.as_dict() for record in store.tasks.with_status(statuses, limit)]
    finally:
        store.dispose()


def dagster_home_of(manifest: Manifest, given: str | Path | None = None) -> Path:
    """The Dagster home routing is read from: given, else $DAGSTER_HOME, else the one `grace dev` renders."""
    return Path(given or os.environ.get("DAGSTER_HOME") or manifest.dagster_home).resolve()


def routing_stats(config: str | Path | None = None, dagster_home: str | Path | None = None) -> dict:
    """Per-origin load, quota use, SLA breaches and queue waits, from the Dagster instance's runs and the store.

    The shape of grace.resources.tasks.routing_report.routing_stats, plus "dagster_home"; "instance_drift"
    lists how that instance's run queue differs from grace.yaml (empty when it enforces it).
    Raises NoInstance when the Dagster home has no dagster.yaml, or one Dagster cannot load.
    """
    manifest = load_routed_manifest(config)
    home = dagster_home_of(manifest, dagster_home)
    if not (home / "dagster.yaml").is_file():
        raise NoInstance(
            f"no Dagster instance at {home} (it has no dagster.yaml); start `grace dev` once to render it, "
            "or pass the Dagster home your daemon runs in (--dagster-home, or DAGSTER_HOME)"
        )
    import yaml
    from dagster import DagsterInstance
    from dagster._core.errors import DagsterError
    from dagster_shared.check import CheckError

    from grace.resources.tasks.routing_report import routing_stats as compute

    instance = None
    try:
        instance = DagsterInstance.from_config(str(home))
        instance.run_coordinator  # noqa: B018 (built lazily: a class that cannot load fails here, not midway)
    except (yaml.YAMLError, DagsterError, CheckError, OSError) as error:
        if instance is not None:
            instance.dispose()
        problem = " ".join(str(error).split())[:500]
        raise NoInstance(
            f"Dagster cannot load the instance at {home}: {type(error).__name__}: {problem}; "
            f"fix {home / 'dagster.yaml'}, or let `grace dev` render it again"
        ) from None
    store = Store(manifest.store_url)
    try:
        return {**compute(instance, store.tasks, manifest.routing), "dagster_home": str(home)}
    finally:
        store.dispose()
        instance.dispose()


def key_status(config: str | Path | None = None) -> dict:
    """Each key version's status, age and rows under it, the primary's due time and overdue flag, and where
    the KEK lives (never the KEK). Raises SecretError or KeyVaultError when the KEK is missing or wrong."""
    from grace.pipelines.keys import key_status as status_of

    manifest = load_routed_manifest(config)
    with _key_vault(manifest, "api") as vault:
        return status_of(vault, manifest.keys.cron)


def rotate_keys(force: bool = False, config: str | Path | None = None, via: str = "api") -> dict:
    """A new primary key version if the current one is due (or force), then every row rewrapped to it and
    unused old versions destroyed: the rotate_keys job's report (rotated, primary, rewrapped, destroyed, kept)."""
    from grace.resources.tasks.builtin_handlers import rotate_and_rewrap

    manifest = load_routed_manifest(config)
    with _key_vault(manifest, via) as vault:
        return rotate_and_rewrap(vault, force, manifest.keys.rewrap_batch)


def rewrap_keys(config: str | Path | None = None, via: str = "api") -> dict:
    """Every row under an older key version re-encrypted to the primary: {"primary", "rewrapped": {column: rows}}."""
    manifest = load_routed_manifest(config)
    with _key_vault(manifest, via) as vault:
        primary = vault.ensure_primary().version
        return {"primary": primary, "rewrapped": vault.rewrap_all(manifest.keys.rewrap_batch)}


def destroy_key(version: int, config: str | Path | None = None, via: str = "api") -> None:
    """Erase a key version's data key; DestroyRefused (with the reason) while it is primary, recent or in use."""
    with _key_vault(load_routed_manifest(config), via) as vault:
        vault.destroy(version)


def rotate_kek(new_kek: str, config: str | Path | None = None, via: str = "api") -> dict:
    """Rewrap every data key under the KEK at new_kek (env:NAME, or file:PATH relative to the working folder);
    no row changes. Afterwards grace.yaml's keys.kek must name the new reference: {"versions", "from", "to"}."""
    from grace.core.secrets import SecretError, parse_secret_ref, resolve_secret
    from grace.resources.db.key_tables import KeyStatus

    manifest = load_routed_manifest(config)
    reference = parse_secret_ref(new_kek, Path.cwd())
    new_key = resolve_secret(reference)
    with _key_vault(manifest, via) as vault:
        if new_key == resolve_secret(manifest.keys.kek):
            raise SecretError(f"{reference.describe()} is the KEK in use already; give a new key")
        live = [version for version in vault.versions() if version.status != KeyStatus.DESTROYED]
        vault.rotate_kek(new_key, reference.describe())
    return {"versions": len(live), "from": manifest.keys.kek, "to": str(reference)}


def check_kek(manifest: Manifest) -> str:
    """Where the KEK was found, once it is known to open the store's data keys; SecretError or WrongKek if not."""
    with _key_vault(manifest, "check") as vault:
        return vault.kek_source


def stored_key_versions(manifest: Manifest) -> int:
    """Key versions not destroyed in the manifest's store (0 for a new store), read without the KEK."""
    from grace.resources.db.key_tables import live_key_versions
    from grace.resources.db.schema import make_engine

    engine = make_engine(manifest.store_url)
    try:
        return live_key_versions(engine)
    finally:
        engine.dispose()


@contextmanager
def _key_vault(manifest: Manifest, via: str) -> Iterator[Any]:
    """A KeyVault over the manifest's store; its audit entries carry "<via>:<id>" where a run id would be."""
    from grace.resources.tasks.builtin_handlers import open_key_vault

    store = Store(manifest.store_url)
    try:
        yield open_key_vault(manifest, store.engine, f"{via}:{uuid.uuid4().hex[:12]}")
    finally:
        store.dispose()

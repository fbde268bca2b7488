"""Drive a whole Grace deployment in-process: a manifest in a temporary folder, real Dagster
sensor evaluation and `materialize`, and the same Searcher the CLI uses."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    build_sensor_context,
    materialize,
)

from grace.core.manifest import Manifest, load_manifest
from grace.core.search_filter import SearchFilter
from grace.core.secrets import create_key_file, parse_secret_ref
from grace.definitions import build_definitions
from grace.resources.index.search import Searcher, index_stats
from grace.resources.index.vector_index import ShardedIndex
from grace.resources.keys.vault import KeyVault
from grace.resources.store.store import Store, shared_store
from grace.resources.wiring.dagster_resources import StoreResource


def manifest_text(
    store_url: str | None = None,
    shards: int = 2,
    extra_sources: str = "",
    max_bytes: str = "1KB",
    events: bool = False,
    inline_max_delta: int = 1000,
    embedding_backend: str = "torch",
    trees: int = 10,
    max_tokens: int = 256,
    patterns: str = "['**/*.txt', '**/*.md']",
    max_pages: int | None = None,
    max_delete_fraction: float | None = None,
    search_mode: str = "hybrid",
) -> str:
    """A test manifest; events=False makes every tick a full scan, so no test waits for watchdog."""
    store_line = f"store: {store_url}\n" if store_url else ""
    return (
        f"state_dir: state\n{store_line}"
        "sources:\n"
        "  - name: docs\n"
        "    path: inbox\n"
        f"    patterns: {patterns}\n"
        "    origin: ingest\n"
        f"    max_bytes: {max_bytes}\n"
        + (f"    max_pages: {max_pages}\n" if max_pages is not None else "")
        + (f"    max_delete_fraction: {max_delete_fraction}\n" if max_delete_fraction is not None else "")
        + f"{extra_sources}"
        f"index:\n  shards: {shards}\n  trees: {trees}\n  rebuild: {{inline_max_delta: {inline_max_delta}}}\n"
        f"watch:\n  events: {str(events).lower()}\n"
        f"embedding:\n  backend: {embedding_backend}\n"
        + (f"chunking:\n  max_tokens: {max_tokens}\n  overlap_tokens: 8\n" if max_tokens != 256 else "")
        + (f"search:\n  mode: {search_mode}\n" if search_mode != "hybrid" else "")
    )


INGEST = AssetSelection.assets("documents", "chunks", "embeddings")
REBUILD = AssetSelection.assets("vector_index") | AssetSelection.checks_for_assets("vector_index")


def ensure_key_file(manifest: Manifest) -> None:
    """Create the manifest's KEK file if it is a file that does not exist yet, as `grace dev` does."""
    reference = parse_secret_ref(manifest.keys.kek)
    if reference.kind == "file" and not reference.path.exists():
        create_key_file(reference.path)


def encrypting_store(url: str, kek: bytes | None = None) -> Store:
    """A Store that seals text under kek (default: a fresh random test KEK), as StoreResource does."""
    store = Store(url)
    vault = KeyVault(store.engine, kek or os.urandom(32), timedelta(days=30), 2, kek_source="the test KEK")
    return store.with_vault(vault)


class PlainText:
    """Stands in for the key vault and stores text as it is: only to measure what encryption costs."""

    def encrypt(self, plaintext: str, aad: str) -> str:
        return plaintext

    def decrypt(self, value: str, aad: str) -> str:
        return value

    def term_key(self) -> bytes:
        return bytes(32)


class PlaintextStoreResource(StoreResource):
    """The store without encryption; no product path builds it."""

    def get(self) -> Store:
        return shared_store(self.url).with_vault(PlainText())


class Deployment:
    """encrypted=False swaps in PlaintextStoreResource, for benchmarks of what encryption costs."""

    def __init__(
        self,
        root: Path,
        store_url: str | None,
        embedder_resource,
        shards: int = 2,
        encrypted: bool = True,
        **manifest_options,
    ):
        self.root = root
        # The manifest names the backend of the embedder given (torch for a fake), so that a CLI or a
        # `grace dev` started on it embeds queries with the same model as the deployment's runs.
        manifest_options.setdefault("embedding_backend", getattr(embedder_resource, "backend", "torch"))
        (root / "grace.yaml").write_text(manifest_text(store_url, shards, **manifest_options))
        self.manifest = load_manifest(root / "grace.yaml")
        ensure_key_file(self.manifest)
        self.defs = build_definitions(self.manifest)
        self.resources = {**self.defs.resources}
        if embedder_resource is not None:  # None: the manifest's own embedder
            self.resources["embedder"] = embedder_resource
        if not encrypted:
            self.resources["store"] = PlaintextStoreResource(url=self.manifest.store_url)
        self.embedder = self.resources["embedder"].get()
        self.instance = DagsterInstance.ephemeral()
        self.cursors: dict[str, str | None] = {}
        self.inbox = self.manifest.sources[0].path
        self.inbox.mkdir(parents=True, exist_ok=True)

    @property
    def store(self) -> Store:
        return self.resources["store"].get()

    @property
    def index(self) -> ShardedIndex:
        return self.resources["vector_index"].get()

    def drop(self, relative: str, content: str | bytes) -> Path:
        path = self.inbox / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return path

    def tick(self, sensor_name: str = "watch_docs") -> list:
        """One real sensor evaluation; the cursor carries over like the daemon's."""
        context = build_sensor_context(
            instance=self.instance, cursor=self.cursors.get(sensor_name), resources=self.resources
        )
        result = self.defs.resolve_sensor_def(sensor_name)(context)
        self.cursors[sensor_name] = result.cursor
        return list(result.run_requests or [])

    def ingest(self, shard: int):
        return self._materialize(INGEST, shard)

    def rebuild(self, shard: int):
        return self._materialize(REBUILD, shard)

    def run_job(self, name: str, shard: int):
        """Execute one of the code location's jobs in process, as its run worker would (job name included)."""
        defs = Definitions(assets=self.defs.assets, asset_checks=self.defs.asset_checks, resources=self.resources)
        jobs = {job.name: job for job in self.defs.jobs}
        job = Definitions.merge(defs, Definitions(jobs=[jobs[name]])).resolve_job_def(name)
        return job.execute_in_process(partition_key=str(shard), instance=self.instance)

    def sync(self, rebuild: bool = True) -> list:
        """Tick every folder sensor, run what they ask for, then rebuild every shard.

        last_embedded counts the chunk texts the ingest runs sent to the model.
        """
        requests = [request for source in self.manifest.sources for request in self.tick(f"watch_{source.name}")]
        self.last_embedded = 0
        for request in requests:
            result = self.ingest(int(request.partition_key))
            assert result.success
            for event in result.get_asset_materialization_events():
                if event.asset_key == AssetKey("embeddings"):
                    self.last_embedded += event.materialization.metadata["embedded"].value
        if rebuild:
            for shard in range(self.manifest.index.shards):
                assert self.rebuild(shard).success
        return requests

    def check(self):
        """Run the index_matches_store check on its own, as the UI's "Execute" does."""
        result = materialize(
            [*self.defs.assets, *self.defs.asset_checks],
            selection=AssetSelection.checks(AssetCheckKey(AssetKey("vector_index"), "index_matches_store")),
            resources=self.resources,
            instance=self.instance,
        )
        [evaluation] = result.get_asset_check_evaluations()
        return evaluation

    def snapshot(self) -> dict:
        """Everything a rerun must reproduce, independent of row ids and timing."""
        store, model = self.store, self.embedder
        hits = {}
        for shard in range(self.manifest.index.shards):
            ids = store.index_delta.embedded_chunk_ids(shard, self.manifest.index.shards, model.model_id)
            hits.update(store.texts.chunk_hits([int(i) for i in ids]))
        chunk_ids = sorted(hits)
        _ids, vectors = store.embeddings.vectors_of(chunk_ids, model.model_id)
        rows = sorted(
            zip(((hits[i].path, hits[i].ordinal, hits[i].text) for i in chunk_ids), vectors), key=lambda row: row[0]
        )
        chunks = [key for key, _vector in rows]
        matrix = np.array([vector for _key, vector in rows])
        totals = self.stats()["total"]
        indexed = sorted(
            (hits[int(i)].path, hits[int(i)].ordinal)
            for shard in range(self.manifest.index.shards)
            if (loaded := self.index.load(shard)) is not None
            for i in loaded.chunk_ids
            if int(i) in hits
        )
        shards = self.manifest.index.shards
        # Term hashes differ between stores (each has its own term key): compare postings with their text instead.
        checked = [store.lexical.disagreements(shard, shards, limit=len(hits) + 1) for shard in range(shards)]
        return {
            "chunks": chunks,
            "vectors": matrix,
            "indexed": indexed,
            "quarantined": store.documents.quarantined(),
            "stats": totals,
            "lexical": {
                "without_postings": store.lexical.missing(),
                "postings_checked": sum(compared for compared, _wrong in checked),
                "postings_wrong": sum(len(wrong) for _compared, wrong in checked),
            },
        }

    def search(self, query: str, k: int = 5, mode: str | None = None, only: SearchFilter | None = None):
        """Search as grace.yaml's search.mode (hybrid by default) says, or in mode; only what passes only."""
        searcher = Searcher.configured(self.store, self.index, self.embedder, self.manifest)
        return searcher.search(query, k, mode, only)

    def stats(self) -> dict:
        return index_stats(self.store, self.index, self.embedder.model_id)

    def _materialize(self, selection: AssetSelection, shard: int):
        return materialize(
            [*self.defs.assets, *self.defs.asset_checks],
            selection=selection,
            partition_key=str(shard),
            resources=self.resources,
            instance=self.instance,
        )


def assert_same_state(actual: dict, expected: dict) -> None:
    """Snapshots agree: identical rows, index membership and stats; vectors to float tolerance."""
    assert {k: v for k, v in actual.items() if k != "vectors"} == {k: v for k, v in expected.items() if k != "vectors"}
    assert actual["vectors"].shape == expected["vectors"].shape
    assert np.allclose(actual["vectors"], expected["vectors"], atol=1e-5)


def tick_until(deployment: Deployment, predicate, timeout: float = 15.0) -> list:
    """Tick until predicate(run requests) holds: watchdog delivers events after a short buffer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        requests = deployment.tick()
        if predicate(requests):
            return requests
        time.sleep(0.2)
    raise TimeoutError("the sensor never saw the change")

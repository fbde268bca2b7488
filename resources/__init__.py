"""Services as plain classes, each with a thin Dagster ConfigurableResource, injected by name."""

from __future__ import annotations

from grace.core.manifest import Manifest
from grace.resources.embedder import EmbedderResource
from grace.resources.store import StoreResource
from grace.resources.vector_index import VectorIndexResource


def build_resources(manifest: Manifest) -> dict:
    return {
        "store": StoreResource(url=manifest.store_url),
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

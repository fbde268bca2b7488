"""The services a manifest wires, as plain objects: what the CLI and the Python API open, without Dagster.

bindings.py gives the same services to Dagster, from the same settings.
"""

from __future__ import annotations

import os

from grace.core.manifest import Manifest
from grace.resources.embedding.embedder import Embedder, shared_embedder
from grace.resources.embedding.onnx_model import model_cache_root
from grace.resources.index.search import Searcher
from grace.resources.index.vector_index import ShardedIndex
from grace.resources.store.store import Store, open_store


def key_settings(manifest: Manifest) -> dict:
    """The store and its KEK and key policy: the store and the vault that rotates its keys see the same."""
    keys = manifest.keys
    return dict(
        url=manifest.store_url,
        kek=keys.kek,
        rotate_every_seconds=int(keys.rotate_every.total_seconds()),
        min_decryption_versions=keys.min_decryption_versions,
    )


def index_settings(manifest: Manifest) -> dict:
    index = manifest.index
    return dict(root=str(manifest.index_dir), shards=index.shards, trees=index.trees, search_k=index.search_k)


def embedder_settings(manifest: Manifest) -> dict:
    """The embedding section, with its model cache under state_dir."""
    embedding = manifest.embedding
    return dict(
        model=embedding.model,
        device=embedding.device,
        batch_size=embedding.batch_size,
        backend=embedding.backend,
        cache_root=str(model_cache_root(manifest.state_dir)),
        threads=embedding.threads or model_threads(manifest),
    )


def model_threads(manifest: Manifest) -> int:
    """The cores of this process divided among the shard runs that can run at once, at least one.

    Measured on 2 cores (bench/parallel.py): two runs of one thread each ingest 1.26x as fast as one
    run of two threads, while two runs of two threads each were slower than one (0.93x).
    """
    concurrent_runs = min(manifest.routing.shard_runs or 1, manifest.index.shards)
    return max(1, len(os.sched_getaffinity(0)) // concurrent_runs)


def open_manifest_store(manifest: Manifest) -> Store:
    """The manifest's store, sealing and opening text with its KEK (see open_store)."""
    return open_store(**key_settings(manifest), rewrap_batch=manifest.keys.rewrap_batch)


def open_index(manifest: Manifest) -> ShardedIndex:
    settings = index_settings(manifest)
    return ShardedIndex(settings.pop("root"), **settings)


def open_embedder(manifest: Manifest) -> Embedder:
    """The process's embedder for the manifest; the model loads at the first encode."""
    return shared_embedder(**embedder_settings(manifest))


def open_searcher(manifest: Manifest) -> Searcher:
    """A Searcher over the manifest's store, index and embedder, in its search.mode."""
    return Searcher.configured(open_manifest_store(manifest), open_index(manifest), open_embedder(manifest), manifest)

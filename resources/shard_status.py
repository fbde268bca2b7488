"""What a shard holds right now compared with its index: pending, tombstoned, coverage.

Search, stats, the rebuild asset and the freshness sensor all read a shard's status here, and
the rebuild asset and the reindex task both rebuild a shard with rebuild_shard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from grace.resources.store import Store
from grace.resources.vector_index import IndexCorrupt, IndexVersion, LoadedIndex, ShardedIndex


@dataclass(frozen=True)
class ShardView:
    """What a shard holds right now: searchable ids, the usable index, and what it lacks."""

    shard: int
    searchable: np.ndarray  # chunk ids with an embedding, of active documents
    index: LoadedIndex | None  # None if missing or built with another model
    pending: np.ndarray  # searchable but not in the index
    tombstoned: np.ndarray  # in the index but no longer searchable
    index_problem: str | None = None  # why the shard's index files are unusable, if they are

    @property
    def indexed(self) -> int:
        return len(self.searchable) - len(self.pending)

    @property
    def coverage(self) -> float:
        return coverage(self.indexed, len(self.searchable))

    @property
    def stale_fraction(self) -> float:
        return stale_fraction(len(self.pending), len(self.tombstoned), len(self.searchable))


def shard_views(store: Store, index: ShardedIndex, model_id: str) -> list[ShardView]:
    """Every shard's view, from one pass over the store."""
    return [
        shard_view(index, shard, searchable, model_id)
        for shard, searchable in enumerate(store.searchable_chunk_ids(index.shards, model_id))
    ]


def shard_view(index: ShardedIndex, shard: int, searchable: np.ndarray, model_id: str) -> ShardView:
    """Compare a shard's searchable chunk ids with its current index (if usable)."""
    problem = None
    try:
        loaded = index.load(shard)
    except IndexCorrupt as error:
        # Counted as unindexed: search scans the shard exactly and the freshness sensor rebuilds it.
        loaded, problem = None, str(error)
    if loaded is not None and loaded.meta.model_id != model_id:
        loaded = None
    in_index = loaded.chunk_ids if loaded is not None else np.empty(0, dtype=np.int64)
    return ShardView(
        shard=shard,
        searchable=searchable,
        index=loaded,
        pending=np.setdiff1d(searchable, in_index, assume_unique=True),
        tombstoned=np.setdiff1d(in_index, searchable, assume_unique=True),
        index_problem=problem,
    )


def inline_refusal(view: ShardView, max_delta: int, max_vectors: int) -> str | None:
    """Why an ingest run should leave the shard's index to the rebuild job; None if it should build it itself."""
    delta = len(view.pending) + len(view.tombstoned)
    if delta == 0 and view.index_problem is None:
        return "already up to date"
    if delta > max_delta:
        return f"{delta} vectors changed, more than index.rebuild.inline_max_delta ({max_delta})"
    if len(view.searchable) > max_vectors:
        return f"{len(view.searchable)} vectors, more than index.rebuild.inline_max_vectors ({max_vectors})"
    return None


def stale_fraction(pending: int, tombstoned: int, total_embeddings: int) -> float:
    """Share of a shard's vectors that the index gets wrong: pending plus tombstoned."""
    base = total_embeddings + tombstoned
    return (pending + tombstoned) / base if base else 0.0


def coverage(indexed: int, total: int) -> float:
    """Share of searchable embeddings that the index holds; 1.0 for an empty shard."""
    return indexed / total if total else 1.0


@dataclass(frozen=True)
class RebuiltShard:
    built: IndexVersion
    view: ShardView  # read back from the swapped-in files
    seconds: float


def rebuild_shard(store: Store, index: ShardedIndex, shard: int, model_id: str) -> RebuiltShard:
    """Build a shard's index from every searchable embedding it has and swap it in.

    The caller must hold the shard's lease: one writer per shard.
    """
    started = time.perf_counter()
    searchable = store.embedded_chunk_ids(shard, index.shards, model_id)
    chunk_ids, vectors = store.vectors_of(searchable, model_id)
    built = index.build(shard, chunk_ids, vectors, model_id)
    seconds = time.perf_counter() - started
    # Reads the swapped-in files back and compares them with the ids they were built from.
    return RebuiltShard(built, shard_view(index, shard, searchable, model_id), seconds)

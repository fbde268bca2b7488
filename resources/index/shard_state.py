"""What a shard holds right now compared with its index: pending, tombstoned, coverage.

Search, stats, the rebuild asset and the freshness sensor all read a shard's status here, and
the rebuild asset and the reindex task both rebuild a shard with rebuild_shard.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from grace.resources.index.vector_index import IndexCorrupt, IndexVersion, LoadedIndex, ShardedIndex
from grace.resources.store.store import Store


@dataclass(frozen=True)
class ShardView:
    """What a shard holds right now compared with its usable index."""

    shard: int
    total: int  # searchable chunks: active documents, embedding present
    index: LoadedIndex | None  # None if missing, damaged, or built with another model or layout
    pending: np.ndarray  # searchable but not in the index
    tombstoned: np.ndarray  # in the index but no longer searchable
    index_problem: str | None = None  # why the shard's index files are unusable, if they are

    @property
    def indexed(self) -> int:
        return self.total - len(self.pending)

    @property
    def coverage(self) -> float:
        return coverage(self.indexed, self.total)

    @property
    def stale_fraction(self) -> float:
        return stale_fraction(len(self.pending), len(self.tombstoned), self.total)


def shard_views(store: Store, index: ShardedIndex, model_id: str) -> list[ShardView]:
    """Every shard compared with its current index, the changes of all shards read at once."""
    return _views(store, index, range(index.shards), model_id)


def shard_view(store: Store, index: ShardedIndex, shard: int, model_id: str) -> ShardView:
    return _views(store, index, [shard], model_id)[0]


def _views(store: Store, index: ShardedIndex, shards: Iterable[int], model_id: str) -> list[ShardView]:
    """Compare shards with their current indexes, reading only what changed since each build.

    A shard without a usable index is wholly pending, which costs a pass over the shard: search
    scans it exactly, and the freshness sensor rebuilds it.
    """
    epoch = store.layout.epoch(index.shards)
    loaded: dict[int, LoadedIndex] = {}
    views: dict[int, ShardView] = {}
    for shard in shards:
        try:
            current = index.load(shard)
        except IndexCorrupt as error:
            current, problem = None, str(error)
        else:
            problem = None
        if current is not None and usable(current.meta, model_id, epoch):
            loaded[shard] = current
        else:
            searchable = store.index_delta.embedded_chunk_ids(shard, index.shards, model_id)
            views[shard] = ShardView(shard, len(searchable), None, searchable, np.empty(0, dtype=np.int64), problem)
    builds = {shard: (current.meta.high_water, current.unsearchable_at_build) for shard, current in loaded.items()}
    for shard, (candidates, alive) in store.index_delta.changed_since_builds(index.shards, model_id, builds).items():
        current = loaded[shard]
        in_index = np.isin(candidates, current.chunk_ids, assume_unique=True)
        pending, tombstoned = candidates[alive & ~in_index], candidates[~alive & in_index]
        views[shard] = ShardView(
            shard, current.meta.items - len(tombstoned) + len(pending), current, pending, tombstoned
        )
    return [views[shard] for shard in sorted(views)]


def usable(meta: IndexVersion, model_id: str, layout_epoch: int) -> bool:
    """Built with this model, under this shard layout, by a Grace that records its high-water mark."""
    return meta.model_id == model_id and meta.layout_epoch == layout_epoch and meta.high_water is not None


def inline_refusal(view: ShardView, max_delta: int, max_vectors: int) -> str | None:
    """Why an ingest run should leave the shard's index to the rebuild job; None if it should build it itself."""
    delta = len(view.pending) + len(view.tombstoned)
    if delta == 0 and view.index_problem is None:
        return "already up to date"
    if delta > max_delta:
        return f"{delta} vectors changed, more than index.rebuild.inline_max_delta ({max_delta})"
    if view.total > max_vectors:
        return f"{view.total} vectors, more than index.rebuild.inline_max_vectors ({max_vectors})"
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

    The caller must hold the shard's lease: one writer per shard, so no chunk of the shard is
    inserted while the build reads it.
    """
    started = time.perf_counter()
    epoch = store.layout.epoch(index.shards)
    snapshot = store.index_delta.build_snapshot(shard, index.shards, model_id)
    chunk_ids, vectors = store.embeddings.vectors_of(snapshot.searchable, model_id)
    built = index.build(
        shard,
        chunk_ids,
        vectors,
        model_id,
        high_water=snapshot.high_water,
        unsearchable=snapshot.unsearchable,
        layout_epoch=epoch,
    )
    # Only once the new version is current: until then, searches still need these tombstones.
    store.index_delta.forget_removed(snapshot.removed_log_ids)
    seconds = time.perf_counter() - started
    return RebuiltShard(built, shard_view(store, index, shard, model_id), seconds)

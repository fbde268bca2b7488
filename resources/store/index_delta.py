"""What changed in a shard since its index was built, read without a pass over the shard.

A build records the highest chunk id of its shard and the chunks at or below it that were not
searchable then. Chunk ids are never reused and only the run holding the shard's lease inserts
chunks, so the chunks a search must look at beyond the index are: ids above the high-water
mark, those unsearchable at build time, and the chunks logged as removed since (removed_chunks).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, Select, and_, bindparam, delete, func, or_, select

from grace.resources.db.schema import batches, chunks, documents, removed_chunks
from grace.resources.db.work_left import has_embedding
from grace.resources.store.layout import ShardLayout


@dataclass(frozen=True)
class BuildSnapshot:
    """A shard as one read transaction saw it, for an index build."""

    high_water: int  # the highest chunk id of the shard (0 if none)
    searchable: np.ndarray  # sorted ids of searchable chunks (active document, embedding present)
    unsearchable: np.ndarray  # sorted ids at or below high_water that were not searchable
    removed_log_ids: list[int]  # removed_chunks rows the build covers, cleared once it is swapped in


class IndexDelta:
    """store.index_delta: the reads behind a shard's pending and tombstoned vectors."""

    def __init__(self, engine: Engine, writer: Engine, layout: ShardLayout):
        self.engine = engine
        self.writer = writer
        self.layout = layout

    def embedded_chunk_ids(self, shard: int, shards: int, model_id: str) -> np.ndarray:
        """Sorted ids of one shard's searchable chunks: a pass over the shard, for builds and checks."""
        self.layout.epoch(shards)
        with self.engine.connect() as connection:
            return _searchable_in_shard(connection, shard, model_id)

    def build_snapshot(self, shard: int, shards: int, model_id: str) -> BuildSnapshot:
        self.layout.epoch(shards)
        with self.engine.connect() as connection, connection.begin():
            high_water = connection.execute(
                select(func.coalesce(func.max(chunks.c.id), 0)).where(chunks.c.shard == shard)
            ).scalar_one()
            everything = _ids(connection, select(chunks.c.id).where(chunks.c.shard == shard, chunks.c.id <= high_water))
            searchable = _searchable_in_shard(connection, shard, model_id, up_to=high_water)
            log_ids = list(
                connection.execute(select(removed_chunks.c.id).where(removed_chunks.c.shard == shard)).scalars()
            )
        unsearchable = np.setdiff1d(everything, searchable, assume_unique=True)
        return BuildSnapshot(int(high_water), searchable, unsearchable, log_ids)

    def changed_since_builds(
        self, shards: int, model_id: str, builds: dict[int, tuple[int, np.ndarray]]
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """For each shard's build (high-water mark, ids unsearchable at build): (candidate chunk ids,
        whether each is searchable now), sorted. The candidates are every chunk whose searchability
        may differ from what the build saw, found by look-ups of what changed, in one read."""
        self.layout.epoch(shards)
        if not builds:
            return {}
        statements = _delta_statements(tuple(sorted(builds)))
        marks = {f"mark_{shard}": mark for shard, (mark, _unsearchable) in builds.items()}
        with self.engine.connect() as connection, connection.begin():
            found: dict[int, list[int]] = {shard: [] for shard in builds}
            for shard, chunk_id in connection.execute(statements.newer, marks):
                found[shard].append(chunk_id)
            for shard, chunk_id in connection.execute(statements.removed):
                found[shard].append(chunk_id)
            candidates = {
                shard: np.union1d(np.asarray(found[shard], dtype=np.int64), unsearchable)
                for shard, (_mark, unsearchable) in builds.items()
            }
            searchable: set[int] = set()
            for batch in batches(np.concatenate(list(candidates.values())).tolist(), 500):
                searchable.update(
                    connection.execute(statements.searchable, {"ids": batch, "model_id": model_id}).scalars()
                )
        return {
            shard: (ids, np.fromiter((int(i) in searchable for i in ids), dtype=bool, count=len(ids)))
            for shard, ids in candidates.items()
        }

    def forget_removed(self, log_ids: Sequence[int]) -> None:
        """Clear removed_chunks rows a swapped-in build covers; rows logged since stay."""
        with self.writer.begin() as connection:
            for batch in batches(list(log_ids), 500):
                connection.execute(delete(removed_chunks).where(removed_chunks.c.id.in_(batch)))


@dataclass(frozen=True)
class _DeltaStatements:
    newer: Select  # chunks above each shard's high-water mark (parameters mark_<shard>)
    removed: Select  # the removed_chunks log of those shards
    searchable: Select  # which of the given ids (parameter ids) are searchable with model_id


@functools.lru_cache(maxsize=64)
def _delta_statements(shards: tuple[int, ...]) -> _DeltaStatements:
    """Built once per set of shards: constructing SQLAlchemy statements costs more than running
    these on a search's budget."""
    newer = or_(*(and_(chunks.c.shard == shard, chunks.c.id > bindparam(f"mark_{shard}")) for shard in shards))
    return _DeltaStatements(
        newer=select(chunks.c.shard, chunks.c.id).where(newer),
        removed=select(removed_chunks.c.shard, removed_chunks.c.chunk_id).where(removed_chunks.c.shard.in_(shards)),
        searchable=select(chunks.c.id)
        .join(documents, documents.c.id == chunks.c.document_id)
        .where(
            chunks.c.id.in_(bindparam("ids", expanding=True)),
            documents.c.status == "active",
            has_embedding(bindparam("model_id")),
        ),
    )


def _searchable_in_shard(connection, shard: int, model_id: str, up_to: int | None = None) -> np.ndarray:
    query = (
        select(chunks.c.id)
        .join(documents, documents.c.id == chunks.c.document_id)
        .where(chunks.c.shard == shard, documents.c.status == "active", has_embedding(model_id))
    )
    if up_to is not None:
        query = query.where(chunks.c.id <= up_to)
    return _ids(connection, query.order_by(chunks.c.id))


def _ids(connection, query) -> np.ndarray:
    return np.sort(np.fromiter(connection.execute(query).scalars(), dtype=np.int64))

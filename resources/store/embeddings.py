"""The embeddings: vectors stored and read by (model, chunk hash), and deleted once no chunk needs them.

Vectors are shared across shards by chunk hash, so no shard owns one: a sweep covers a part of the
hash space instead (part k of n), and n sweeps, one per shard, cover every vector once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import ColumnElement, Engine, and_, case, delete, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from grace.resources.db.schema import batches, chunks, embeddings, staged_chunks, utc_now

# A vector younger than this is kept even if nothing references it yet: a writer may stage its
# chunks a moment later.
UNREFERENCED_GRACE = timedelta(minutes=30)
GC_BATCH = 1000  # vectors looked at per read, and deleted per transaction at most
HASH_SPACE = 16**8  # parts of the hash space are cut on the first 8 hex digits of a sha256


class Embeddings:
    """store.embeddings: the vectors of chunk texts, by model, and the sweeps that delete those nothing needs."""

    def __init__(self, engine: Engine, writer: Engine):
        self.engine = engine
        self.writer = writer

    def save(self, model_id: str, chunk_hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors; a hash stored meanwhile by another run is left as it is."""
        now = utc_now()
        rows = [
            dict(model_id=model_id, chunk_hash=chunk_hash, vector=vector.astype(np.float32).tobytes(), created_at=now)
            for chunk_hash, vector in zip(chunk_hashes, vectors)
        ]
        if not rows:
            return
        with self.writer.begin() as connection:
            dialect = sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert
            connection.execute(dialect(embeddings).on_conflict_do_nothing(), rows)

    def vectors_from_other_models(self, chunk_hashes: Sequence[str], model_id: str) -> dict[str, int]:
        """model id -> how many of these chunk texts it has a vector for, for every model but model_id."""
        others = [other for other in self.models() if other != model_id]
        found: dict[str, int] = {}
        with self.engine.connect() as connection:
            # Model by model: the key is (model_id, chunk_hash), so a hash alone would scan the table.
            for other in others:
                for batch in batches(list(chunk_hashes), 500):
                    query = select(func.count()).where(
                        embeddings.c.model_id == other, embeddings.c.chunk_hash.in_(batch)
                    )
                    found[other] = found.get(other, 0) + connection.execute(query).scalar_one()
        return {other: count for other, count in found.items() if count}

    def vectors_of(self, chunk_ids: Iterable[int], model_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, vectors) for the given chunks that have an embedding, in id order."""
        wanted = [int(chunk_id) for chunk_id in chunk_ids]
        found_ids, found_vectors = [], []
        with self.engine.connect() as connection:
            # Two indexed look-ups per batch (ids -> hashes -> vectors) rather than one join,
            # whose plan SQLite gets quadratically wrong.
            for batch in batches(wanted, 5000):
                hash_of = dict(
                    connection.execute(select(chunks.c.id, chunks.c.chunk_hash).where(chunks.c.id.in_(batch))).all()
                )
                vector_of = dict(
                    connection.execute(
                        select(embeddings.c.chunk_hash, embeddings.c.vector).where(
                            embeddings.c.model_id == model_id, embeddings.c.chunk_hash.in_(set(hash_of.values()))
                        )
                    ).all()
                )
                for chunk_id, chunk_hash in hash_of.items():
                    if chunk_hash in vector_of:
                        found_ids.append(chunk_id)
                        found_vectors.append(np.frombuffer(vector_of[chunk_hash], dtype=np.float32))
        if not found_ids:
            return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
        order = np.argsort(found_ids, kind="stable")
        return np.asarray(found_ids, dtype=np.int64)[order], np.vstack(found_vectors)[order]

    def count_orphans(self, now: datetime | None = None) -> tuple[int, int]:
        """(vectors of any model that no live or staged chunk has the text of and the sweep would delete now,
        every stored vector), in one read: an index probe per vector, no text and no vectors loaded."""
        cutoff = (now or utc_now()) - UNREFERENCED_GRACE
        query = select(
            func.coalesce(func.sum(case((_orphaned(cutoff), 1), else_=0)), 0).label("orphans"),
            func.count().label("stored"),
        ).select_from(embeddings)
        with self.engine.connect() as connection:
            row = connection.execute(query).one()
        return int(row.orphans), int(row.stored)

    def delete_unreferenced(
        self,
        part: int = 0,
        parts: int = 1,
        grace: timedelta = UNREFERENCED_GRACE,
        batch_size: int = GC_BATCH,
        now: datetime | None = None,
    ) -> int:
        """Delete, model by model, the vectors of hash range part/parts that no live or staged
        chunk references and that are older than grace; return how many went.

        Reads are short and the deletes few: each batch is read alone, and only its orphans are
        deleted, in a transaction of their own that checks again that nothing references them.
        On PostgreSQL a chunk step of another shard may find a vector, then see it deleted before
        its chunks commit (the same text left one shard as it came to another): that chunk is
        then embedded again by its own run, which looks for live chunks without a vector.
        """
        if not 0 <= part < parts:
            raise ValueError(f"part must be in [0, {parts}), got {part}")
        cutoff = (now or utc_now()) - grace
        low, high = hash_range(part, parts)
        deleted = 0
        for model_id in self.models():
            for orphans in self._orphan_batches(model_id, low, high, cutoff, batch_size):
                with self.writer.begin() as connection:
                    deleted += connection.execute(
                        delete(embeddings).where(
                            embeddings.c.model_id == model_id,
                            embeddings.c.chunk_hash.in_(orphans),
                            _orphaned(cutoff),
                        )
                    ).rowcount
        return deleted

    def delete_retired_models(self, keep: set[str], part: int = 0, parts: int = 1, batch_size: int = GC_BATCH) -> int:
        """Delete the vectors, in hash range part/parts, of every model not in keep (the serving and
        the configured model): once search has moved on from a model, nothing reads them again."""
        low, high = hash_range(part, parts)
        deleted = 0
        for model_id in [model for model in self.models() if model not in keep]:
            in_range = [embeddings.c.model_id == model_id]
            if low is not None:
                in_range.append(embeddings.c.chunk_hash >= low)
            if high is not None:
                in_range.append(embeddings.c.chunk_hash < high)
            while True:
                with self.writer.begin() as connection:
                    batch = select(embeddings.c.chunk_hash).where(*in_range).limit(batch_size)
                    gone = connection.execute(
                        delete(embeddings).where(embeddings.c.model_id == model_id, embeddings.c.chunk_hash.in_(batch))
                    ).rowcount
                deleted += gone
                if gone < batch_size:
                    break
        return deleted

    def models(self) -> Iterator[str]:
        """Every model with vectors, one index probe each (the table holds few models, many rows)."""
        model_id = ""
        while True:
            with self.engine.connect() as connection:
                query = select(func.min(embeddings.c.model_id)).where(embeddings.c.model_id > model_id)
                model_id = connection.execute(query).scalar_one()
            if model_id is None:
                return
            yield model_id

    def _orphan_batches(
        self, model_id: str, low: str | None, high: str | None, cutoff: datetime, batch_size: int
    ) -> Iterator[list[str]]:
        """The orphans of each batch of one model's vectors in [low, high), by hash; batches keyed by hash."""
        in_range = [embeddings.c.model_id == model_id]
        if low is not None:
            in_range.append(embeddings.c.chunk_hash >= low)
        if high is not None:
            in_range.append(embeddings.c.chunk_hash < high)
        after = None
        while True:
            query = select(embeddings.c.chunk_hash, _orphaned(cutoff).label("orphan")).where(*in_range)
            if after is not None:
                query = query.where(embeddings.c.chunk_hash > after)
            with self.engine.connect() as connection:
                rows = connection.execute(query.order_by(embeddings.c.chunk_hash).limit(batch_size)).all()
            if not rows:
                return
            orphans = [row.chunk_hash for row in rows if row.orphan]
            if orphans:
                yield orphans
            after = rows[-1].chunk_hash


def _orphaned(cutoff: datetime) -> ColumnElement[bool]:
    """The vector is older than cutoff and no chunk, live or staged, has its text."""
    live = select(chunks.c.id).where(chunks.c.chunk_hash == embeddings.c.chunk_hash).exists()
    staged = select(staged_chunks.c.ordinal).where(staged_chunks.c.chunk_hash == embeddings.c.chunk_hash).exists()
    return and_(embeddings.c.created_at < cutoff, ~live, ~staged)


def hash_range(part: int, parts: int) -> tuple[str | None, str | None]:
    """[low, high) of the part's hashes; None leaves that end open, so odd hashes are swept too."""

    def bound(index: int) -> str | None:
        return None if index in (0, parts) else f"{index * HASH_SPACE // parts:08x}"

    return bound(part), bound(part + 1)

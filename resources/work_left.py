"""How much work a shard's chunks and embeddings steps have ahead of them: the totals their progress lines
count against. One count each, over the same rows the step then reads."""

from __future__ import annotations

from sqlalchemy import func, select

from grace.resources.schema import (
    chunks,
    documents,
    has_embedding,
    lacks_embedding,
    needs_chunking,
    staged_chunks,
)
from grace.resources.store import Store


def documents_to_chunk(store: Store, shard: int, shards: int, settings_key: str) -> int:
    """The shard's active documents whose chunks are out of date (Store.documents_to_chunk's rows)."""
    store.layout_epoch(shards)
    query = select(func.count()).where(documents.c.shard == shard, needs_chunking(settings_key))
    with store.engine.connect() as connection:
        return connection.execute(query).scalar_one()


def chunk_texts_to_embed(store: Store, shard: int, shards: int, model_id: str) -> int:
    """Distinct texts among the shard's live and staged chunks without a vector of model_id: what
    Store.chunks_to_embed yields, each hash once."""
    store.layout_epoch(shards)
    live = (
        select(chunks.c.chunk_hash)
        .join(documents, documents.c.id == chunks.c.document_id)
        .where(chunks.c.shard == shard, lacks_embedding(model_id))
    )
    staged = (
        select(staged_chunks.c.chunk_hash)
        .join(documents, documents.c.id == staged_chunks.c.document_id)
        .where(
            documents.c.shard == shard,
            documents.c.status == "active",
            ~has_embedding(model_id, staged_chunks.c.chunk_hash),
        )
    )
    hashes = live.union(staged).subquery()
    with store.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(hashes)).scalar_one()

"""Where one document stands, by (source, path): recorded, read, chunked, embedded, indexed.

The HTTP API reports it for the files it writes (GET /api/knowledge/{id}); everything is read
from the store and the shard's current index, never remembered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import func, or_, select

from grace.resources.schema import chunks, documents, embeddings
from grace.resources.shard_status import shard_view
from grace.resources.store import Store
from grace.resources.vector_index import ShardedIndex


@dataclass(frozen=True)
class DocumentStatus:
    status: str  # pending, active, quarantined or deleted (the documents table's)
    reason: str | None  # why it is quarantined
    chunks: int  # live chunks
    searchable: bool  # every live chunk has a vector of the serving model
    indexed: bool  # ...and every one is in the shard's current index

    def as_dict(self) -> dict:
        return asdict(self)


def document_status(store: Store, index: ShardedIndex, model_id: str, source: str, path: str) -> DocumentStatus | None:
    """The document at (source, path), measured against model_id's vectors; None if the store has no row for it."""
    with store.engine.connect() as connection:
        row = connection.execute(
            select(documents.c.id, documents.c.status, documents.c.reason, documents.c.shard).where(
                documents.c.source == source, documents.c.path == path
            )
        ).first()
        if row is None:
            return None
        live = connection.execute(
            select(chunks.c.id, chunks.c.chunk_hash).where(chunks.c.document_id == row.id).order_by(chunks.c.id)
        ).all()
        hashes = {chunk.chunk_hash for chunk in live}
        embedded = (
            connection.execute(
                select(func.count()).where(embeddings.c.model_id == model_id, embeddings.c.chunk_hash.in_(hashes))
            ).scalar_one()
            if hashes
            else 0
        )
    searchable = row.status == "active" and bool(live) and embedded == len(hashes)
    indexed = False
    if searchable:
        view = shard_view(store, index, row.shard, model_id)
        ids = np.asarray([chunk.id for chunk in live], dtype=np.int64)
        indexed = view.index is not None and bool(np.isin(ids, view.index.chunk_ids).all())
    return DocumentStatus(row.status, row.reason, len(live), searchable, indexed)


def paths_ending(store: Store, source: str, folder: str, suffixes: tuple[str, ...]) -> list[str]:
    """Recorded paths of a source inside folder whose names end with one of suffixes (deleted ones too)."""
    prefix = folder.rstrip("/") + "/" if folder else ""
    query = select(documents.c.path).where(
        documents.c.source == source,
        documents.c.path.startswith(prefix, autoescape=True),
        or_(*(documents.c.path.endswith(suffix, autoescape=True) for suffix in suffixes)),
    )
    with store.engine.connect() as connection:
        return sorted(connection.execute(query).scalars())

"""Where one document stands, by (source, path): recorded, read, chunked, embedded, indexed.

The HTTP API reports it for the files it writes (GET /api/knowledge/{id}); everything is read
from the store and the shard's current index, never remembered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from grace.resources.index.shard_state import shard_view
from grace.resources.index.vector_index import ShardedIndex
from grace.resources.store.store import Store


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
    found = store.documents.chunks_of(source, path, model_id)
    if found is None:
        return None
    searchable = found.status == "active" and bool(found.chunk_ids) and found.embedded
    indexed = False
    if searchable:
        view = shard_view(store, index, found.shard, model_id)
        ids = np.asarray(found.chunk_ids, dtype=np.int64)
        indexed = view.index is not None and bool(np.isin(ids, view.index.chunk_ids).all())
    return DocumentStatus(found.status, found.reason, len(found.chunk_ids), searchable, indexed)

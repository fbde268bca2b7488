"""The Grace store: documents, chunks and embeddings in SQLite or PostgreSQL, one SQLAlchemy code path.

Document and chunk text is stored only encrypted, sealed by the store's key vault (see
key_vault.py); everything else is stored as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from grace.core.secrets import SecretError
from grace.resources.chunk_writes import ChunkWrites, all_embedded, lock_document, replace_live_chunks
from grace.resources.document_writes import DocumentWrites
from grace.resources.embedding_gc import EmbeddingGC
from grace.resources.index_delta import IndexDelta
from grace.resources.key_tables import holds_key_versions
from grace.resources.key_vault import REWRAP_BATCH, KeyVault, shared_vault
from grace.resources.ledger import Ledger
from grace.resources.migrations import ensure_head
from grace.resources.schema import (
    NewChunk,
    batches,
    chunks,
    documents,
    embeddings,
    has_embedding,
    make_engine,
    staged_chunks,
    utc_now,
    writer_of,
)
from grace.resources.serving_model import ServingModel
from grace.resources.store_text import SealedText, seal_plaintext_once
from grace.resources.taskbook import TaskBook


class Store(SealedText, Ledger, DocumentWrites, ChunkWrites, IndexDelta, EmbeddingGC, ServingModel):
    """All of Grace's durable state behind one SQLAlchemy engine.

    Text is sealed and opened by vault, with each row's binding as associated data. A store
    without a vault does everything else (scans, leases, tasks, stats, vectors) but refuses to
    write or read text, so the product never stores plaintext.
    """

    def __init__(self, url: str, vault: KeyVault | None = None):
        self.url = url
        self.engine = make_engine(url)
        self.writer = writer_of(self.engine)
        ensure_head(self.engine, url)
        self.tasks = TaskBook(self.engine)
        self.vault = vault

    def dispose(self) -> None:
        self.engine.dispose()

    # --- chunks -------------------------------------------------------------------------

    def discard_stale_stages(self, shard: int, shards: int, settings_key: str) -> int:
        """Drop staged chunks cut from text or settings a document no longer has (left by a dead run)."""
        self.layout_epoch(shards)
        stale = (
            select(documents.c.id)
            .where(
                documents.c.id == staged_chunks.c.document_id,
                documents.c.shard == shard,
                (documents.c.status != "active")
                | documents.c.processed_hash.is_distinct_from(staged_chunks.c.text_hash)
                | (staged_chunks.c.settings != settings_key),
            )
            .exists()
        )
        with self.writer.begin() as connection:
            return connection.execute(delete(staged_chunks).where(stale)).rowcount

    def publish_staged(self, shard: int, shards: int, model_id: str) -> int:
        """Swap in the staged chunks of every document of the shard whose staged chunks all have
        embeddings, each document in one transaction. Returns how many documents went live."""
        self.layout_epoch(shards)
        lacking = select(staged_chunks.c.document_id).where(~has_embedding(model_id, staged_chunks.c.chunk_hash))
        ready = (
            select(staged_chunks.c.document_id)
            .join(documents, documents.c.id == staged_chunks.c.document_id)
            .where(documents.c.shard == shard, staged_chunks.c.document_id.not_in(lacking))
            .distinct()
            .order_by(staged_chunks.c.document_id)
        )
        with self.engine.connect() as connection:
            document_ids = list(connection.execute(ready).scalars())
        return sum(self._publish(document_id, model_id) for document_id in document_ids)

    def _publish(self, document_id: str, model_id: str) -> bool:
        with self.writer.begin() as connection:
            document = lock_document(connection, document_id)
            of_document = staged_chunks.c.document_id == document_id
            by_ordinal = select(staged_chunks).where(of_document).order_by(staged_chunks.c.ordinal)
            staged = connection.execute(by_ordinal).all()
            # Under the lock, the stage must still be cut from the document's current text and be
            # fully embedded; if not, the next chunks step re-stages or discards it.
            cut_from = {(row.text_hash, row.settings) for row in staged}
            current = document is not None and document.status == "active" and len(cut_from) == 1
            if not (current and staged[0].text_hash == document.processed_hash):
                return False
            if not all_embedded(connection, model_id, {row.chunk_hash for row in staged}):
                return False
            # Staged and live chunks share their binding: the sealed text goes live as it is.
            new_chunks = [NewChunk(row.ordinal, row.chunk_hash, row.text, row.token_count) for row in staged]
            replace_live_chunks(connection, document, staged[0].text_hash, new_chunks, staged[0].settings)
            connection.execute(delete(staged_chunks).where(of_document))
        return True

    # --- embeddings ---------------------------------------------------------------------

    def save_embeddings(self, model_id: str, chunk_hashes: Sequence[str], vectors: np.ndarray) -> None:
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
        others = [other for other in self._embedding_models() if other != model_id]
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

    # --- stats --------------------------------------------------------------------------

    def shard_counts(self, shard: int, shards: int) -> dict[str, int]:
        """Document and chunk counts of one shard, straight from the tables."""
        self.layout_epoch(shards)
        in_shard = documents.c.shard == shard
        with self.engine.connect() as connection:
            by_status = dict(
                connection.execute(
                    select(documents.c.status, func.count()).where(in_shard).group_by(documents.c.status)
                ).all()
            )
            # All of the shard's chunks less the few of documents that are not active: two index
            # look-ups rather than a join over every chunk.
            all_chunks = connection.execute(select(func.count()).where(chunks.c.shard == shard)).scalar_one()
            inactive_chunks = connection.execute(
                select(func.count())
                .select_from(chunks.join(documents, documents.c.id == chunks.c.document_id))
                .where(in_shard, documents.c.status != "active")
            ).scalar_one()
            active_chunks = all_chunks - inactive_chunks
        return {
            "documents_active": by_status.get("active", 0),
            "documents_pending": by_status.get("pending", 0),
            "documents_quarantined": by_status.get("quarantined", 0),
            "documents_deleted": by_status.get("deleted", 0),
            "chunks": active_chunks,
        }

    def quarantined(self, source: str | None = None) -> list[tuple[str, str, str]]:
        """(source, path, reason) of every quarantined document."""
        query = select(documents.c.source, documents.c.path, documents.c.reason).where(
            documents.c.status == "quarantined"
        )
        if source is not None:
            query = query.where(documents.c.source == source)
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(query.order_by(documents.c.path))]


@functools.cache
def shared_store(url: str) -> Store:
    """One Store (and connection pool) per process and URL; without a vault, it refuses text."""
    return Store(url)


def open_store(
    url: str,
    kek: str | None = None,
    rotate_every_seconds: int = 30 * 86400,
    min_decryption_versions: int = 2,
    rewrap_batch: int = REWRAP_BATCH,
    run_id: str | None = None,
) -> Store:
    """The process's store for url; with kek (env:NAME or file:PATH), text is sealed by the key vault.

    The KEK is resolved here. Once the store holds key versions, a missing or wrong KEK raises,
    naming where it was looked for; a store with none yet opens without it (scans, stats and empty
    searches need none) and the same error comes from the first text it seals. The first open in a
    process also encrypts any text stored before encryption (release 0.3), in resumable batches.
    Without kek, the store does everything but text (sensors, leases, tasks).
    """
    store = shared_store(url)
    if kek is None:
        return store
    try:
        vault = shared_vault(url, kek, rotate_every_seconds, min_decryption_versions)
    except SecretError as missing:
        with store.engine.connect() as connection:
            if holds_key_versions(connection):
                raise
        return store.lacking_keys(str(missing))
    seal_plaintext_once(vault, rewrap_batch)
    return _store_for_run(store, vault, run_id)


@functools.lru_cache(maxsize=64)
def _store_for_run(store: Store, vault: KeyVault, run_id: str | None) -> Store:
    """One sealing store per run (its audit entries name the run), sharing the engine and data keys."""
    return store.with_vault(vault.for_run(run_id))

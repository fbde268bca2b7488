"""The Grace store: documents, chunks and embeddings in SQLite or PostgreSQL, one SQLAlchemy code path.

Document and chunk text is stored only encrypted, sealed by the store's key vault (see
key_vault.py); everything else is stored as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import asdict

import numpy as np
from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from grace.core.secrets import SecretError
from grace.resources.key_tables import DOCUMENT_TEXT, holds_key_versions
from grace.resources.key_vault import REWRAP_BATCH, KeyVault, shared_vault
from grace.resources.ledger import Ledger
from grace.resources.migrations import ensure_head
from grace.resources.schema import (
    DocumentRow,
    NewChunk,
    batches,
    chunks,
    document_rows,
    documents,
    embeddings,
    has_embedding,
    make_engine,
    needs_processing,
    purge_document,
    staged_chunks,
    utc_now,
    writer_of,
)
from grace.resources.store_text import SealedText, seal_plaintext_once
from grace.resources.taskbook import TaskBook


class Store(SealedText, Ledger):
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

    def unprocessed_documents(self, shard: int, shards: int) -> list[DocumentRow]:
        """Documents of a shard whose disk state is newer than what was processed."""
        query = document_rows().where(documents.c.shard_key % shards == shard, needs_processing())
        with self.engine.connect() as connection:
            return [DocumentRow(*row) for row in connection.execute(query)]

    def set_document_text(self, document_id: str, read_hash: str, text: str) -> None:
        token = self._keys().encrypt(text, DOCUMENT_TEXT.aad((document_id,)))
        with self.writer.begin() as connection:
            _set_processed(connection, document_id, read_hash, status="active", reason=None, text=token)

    def quarantine_document(self, document_id: str, read_hash: str, reason: str) -> None:
        with self.writer.begin() as connection:
            connection.execute(delete(staged_chunks).where(staged_chunks.c.document_id == document_id))
            connection.execute(delete(chunks).where(chunks.c.document_id == document_id))
            _set_processed(
                connection, document_id, read_hash, status="quarantined", reason=reason, text=None, chunked_hash=None
            )

    def purge_document(self, document_id: str) -> None:
        """Remove a deleted document and its chunks; its vectors become tombstones."""
        with self.writer.begin() as connection:
            purge_document(connection, document_id)

    # --- chunks -------------------------------------------------------------------------

    def replace_chunks(
        self, document_id: str, text_hash: str, new_chunks: Sequence[NewChunk], settings_key: str
    ) -> int:
        """Make a document's chunks exactly new_chunks now, dropping any staged ones.

        Returns how many chunk rows were inserted (0 if the document is gone).
        """
        new_chunks = self._sealed_chunks(document_id, new_chunks)
        with self.writer.begin() as connection:
            if _lock_document(connection, document_id) is None:
                return 0
            connection.execute(delete(staged_chunks).where(staged_chunks.c.document_id == document_id))
            return _replace_chunks(connection, document_id, text_hash, new_chunks, settings_key)

    def stage_chunks(
        self, document_id: str, text_hash: str, new_chunks: Sequence[NewChunk], settings_key: str, model_id: str
    ) -> bool:
        """Set a document's new chunks aside until their embeddings exist, so its old chunks stay
        searchable meanwhile; publish them at once if every one is embedded already, or if the
        document has no live chunks to keep (new, or fixed after a quarantine).

        Returns whether the new chunks are live now.
        """
        new_chunks = self._sealed_chunks(document_id, new_chunks)
        with self.writer.begin() as connection:
            if _lock_document(connection, document_id) is None:
                return False
            connection.execute(delete(staged_chunks).where(staged_chunks.c.document_id == document_id))
            # Staging only protects live chunks; without any, it would cost a publish per document.
            nothing_live = (
                connection.execute(select(chunks.c.id).where(chunks.c.document_id == document_id).limit(1)).first()
                is None
            )
            if nothing_live or _all_embedded(connection, model_id, {chunk.chunk_hash for chunk in new_chunks}):
                _replace_chunks(connection, document_id, text_hash, new_chunks, settings_key)
                return True
            connection.execute(
                insert(staged_chunks),
                [
                    dict(document_id=document_id, text_hash=text_hash, settings=settings_key, **asdict(chunk))
                    for chunk in new_chunks
                ],
            )
        return False

    def discard_stale_stages(self, shard: int, shards: int, settings_key: str) -> int:
        """Drop staged chunks cut from text or settings a document no longer has (left by a dead run)."""
        stale = (
            select(documents.c.id)
            .where(
                documents.c.id == staged_chunks.c.document_id,
                documents.c.shard_key % shards == shard,
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
        lacking = select(staged_chunks.c.document_id).where(~has_embedding(model_id, staged_chunks.c.chunk_hash))
        ready = (
            select(staged_chunks.c.document_id)
            .join(documents, documents.c.id == staged_chunks.c.document_id)
            .where(documents.c.shard_key % shards == shard, staged_chunks.c.document_id.not_in(lacking))
            .distinct()
            .order_by(staged_chunks.c.document_id)
        )
        with self.engine.connect() as connection:
            document_ids = list(connection.execute(ready).scalars())
        return sum(self._publish(document_id, model_id) for document_id in document_ids)

    def _publish(self, document_id: str, model_id: str) -> bool:
        with self.writer.begin() as connection:
            document = _lock_document(connection, document_id)
            of_document = staged_chunks.c.document_id == document_id
            by_ordinal = select(staged_chunks).where(of_document).order_by(staged_chunks.c.ordinal)
            staged = connection.execute(by_ordinal).all()
            # Under the lock, the stage must still be cut from the document's current text and be
            # fully embedded; if not, the next chunks step re-stages or discards it.
            cut_from = {(row.text_hash, row.settings) for row in staged}
            current = document is not None and document.status == "active" and len(cut_from) == 1
            if not (current and staged[0].text_hash == document.processed_hash):
                return False
            if not _all_embedded(connection, model_id, {row.chunk_hash for row in staged}):
                return False
            # Staged and live chunks share their binding: the sealed text goes live as it is.
            new_chunks = [NewChunk(row.ordinal, row.chunk_hash, row.text, row.token_count) for row in staged]
            _replace_chunks(connection, document_id, staged[0].text_hash, new_chunks, staged[0].settings)
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
        found: dict[str, int] = {}
        with self.engine.connect() as connection:
            for batch in batches(list(chunk_hashes), 500):
                query = (
                    select(embeddings.c.model_id, func.count())
                    .where(embeddings.c.chunk_hash.in_(batch), embeddings.c.model_id != model_id)
                    .group_by(embeddings.c.model_id)
                )
                for other, count in connection.execute(query):
                    found[other] = found.get(other, 0) + count
        return found

    def embedded_chunk_ids(self, shard: int, shards: int, model_id: str) -> np.ndarray:
        """Sorted ids of one shard's searchable chunks: active documents, embedding present."""
        return self.searchable_chunk_ids(shards, model_id)[shard]

    def searchable_chunk_ids(self, shards: int, model_id: str) -> list[np.ndarray]:
        """Sorted searchable chunk ids of every shard, from one pass over the tables."""
        query = (
            select(chunks.c.id, documents.c.shard_key % shards)
            .join(documents, documents.c.id == chunks.c.document_id)
            .where(documents.c.status == "active", has_embedding(model_id))
            .order_by(chunks.c.id)
        )
        with self.engine.connect() as connection:
            flat = (value for row in connection.execute(query) for value in row)
            rows = np.fromiter(flat, dtype=np.int64).reshape(-1, 2)
        return [rows[rows[:, 1] == shard, 0] for shard in range(shards)]

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
        in_shard = documents.c.shard_key % shards == shard
        with self.engine.connect() as connection:
            by_status = dict(
                connection.execute(
                    select(documents.c.status, func.count()).where(in_shard).group_by(documents.c.status)
                ).all()
            )
            active_chunks = connection.execute(
                select(func.count())
                .select_from(chunks.join(documents, documents.c.id == chunks.c.document_id))
                .where(in_shard, documents.c.status == "active")
            ).scalar_one()
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


def _lock_document(connection: Connection, document_id: str):
    """The document's row, locked until the transaction ends (SQLite's IMMEDIATE begin locks it all)."""
    query = select(documents.c.status, documents.c.processed_hash).where(documents.c.id == document_id)
    return connection.execute(query.with_for_update()).first()


def _all_embedded(connection: Connection, model_id: str, chunk_hashes: set[str]) -> bool:
    found = 0
    for batch in batches(sorted(chunk_hashes), 500):
        found += connection.execute(
            select(func.count()).where(embeddings.c.model_id == model_id, embeddings.c.chunk_hash.in_(batch))
        ).scalar_one()
    return found == len(chunk_hashes)


def _replace_chunks(
    connection: Connection, document_id: str, text_hash: str, new_chunks: Sequence[NewChunk], settings_key: str
) -> int:
    """Make a locked document's chunks exactly new_chunks; return how many rows were inserted.

    Rows whose text is unchanged keep their ids, so their vectors stay valid in the built
    index. Every statement keeps (document_id, ordinal) unique: leftovers go first, and
    reused rows pass through negative ordinals so no two ever share one on the way.
    """
    existing: dict[str, list[tuple[int, int]]] = {}
    for chunk_id, chunk_hash, ordinal in connection.execute(
        select(chunks.c.id, chunks.c.chunk_hash, chunks.c.ordinal)
        .where(chunks.c.document_id == document_id)
        .order_by(chunks.c.id)
    ):
        existing.setdefault(chunk_hash, []).append((chunk_id, ordinal))
    moves, inserted = [], []
    for chunk in new_chunks:
        reusable = existing.get(chunk.chunk_hash)
        if reusable:
            chunk_id, ordinal = reusable.pop(0)
            if ordinal != chunk.ordinal:
                moves.append({"chunk_id": chunk_id, "new_ordinal": chunk.ordinal})
        else:
            inserted.append(dict(document_id=document_id, **asdict(chunk)))
    leftover = [chunk_id for pairs in existing.values() for chunk_id, _ordinal in pairs]
    for batch in batches(leftover, 500):
        connection.execute(delete(chunks).where(chunks.c.id.in_(batch)))
    by_id = chunks.c.id == bindparam("chunk_id")
    if moves:
        connection.execute(update(chunks).where(by_id).values(ordinal=-1 - bindparam("new_ordinal")), moves)
        connection.execute(update(chunks).where(by_id).values(ordinal=bindparam("new_ordinal")), moves)
    if inserted:
        connection.execute(insert(chunks), inserted)
    connection.execute(
        update(documents)
        .where(documents.c.id == document_id)
        .values(chunked_hash=text_hash, chunk_settings=settings_key)
    )
    return len(inserted)


def _set_processed(connection, document_id: str, read_hash: str, **values: object) -> None:
    # A deletion the sensor recorded while the file was being read wins.
    connection.execute(
        update(documents)
        .where(documents.c.id == document_id, documents.c.status != "deleted")
        .values(processed_hash=read_hash, updated_at=utc_now(), **values)
    )


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

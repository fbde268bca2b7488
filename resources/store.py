"""The Grace store: documents, chunks and embeddings in SQLite or PostgreSQL, one SQLAlchemy code path."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import numpy as np
from dagster import ConfigurableResource
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from grace.resources.ledger import Ledger
from grace.resources.schema import (
    ChunkHit,
    DocumentRow,
    NewChunk,
    batches,
    chunks,
    document_rows,
    documents,
    embeddings,
    has_embedding,
    lacks_embedding,
    make_engine,
    metadata,
    needs_chunking,
    needs_processing,
    purge_document,
    utc_now,
)


class Store(Ledger):
    """All of Grace's durable state behind one SQLAlchemy engine."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        metadata.create_all(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    def unprocessed_documents(self, shard: int, shards: int) -> list[DocumentRow]:
        """Documents of a shard whose disk state is newer than what was processed."""
        query = document_rows().where(documents.c.shard_key % shards == shard, needs_processing())
        with self.engine.connect() as connection:
            return [DocumentRow(*row) for row in connection.execute(query)]

    def set_document_text(self, document_id: str, read_hash: str, text: str) -> None:
        with self.engine.begin() as connection:
            _set_processed(connection, document_id, read_hash, status="active", reason=None, text=text)

    def quarantine_document(self, document_id: str, read_hash: str, reason: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(chunks).where(chunks.c.document_id == document_id))
            _set_processed(
                connection, document_id, read_hash, status="quarantined", reason=reason, text=None, chunked_hash=None
            )

    def purge_document(self, document_id: str) -> None:
        """Remove a deleted document and its chunks; its vectors become tombstones."""
        with self.engine.begin() as connection:
            purge_document(connection, document_id)

    # --- chunks -------------------------------------------------------------------------

    def documents_to_chunk(self, shard: int, shards: int, settings_key: str) -> list[tuple[str, str, str]]:
        """(document id, text hash, text) of active documents whose chunks are out of date, by id."""
        query = (
            select(documents.c.id, documents.c.processed_hash, documents.c.text)
            .where(documents.c.shard_key % shards == shard, needs_chunking(settings_key))
            .order_by(documents.c.id)
        )
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(query)]

    def replace_chunks(
        self, document_id: str, text_hash: str, new_chunks: Sequence[NewChunk], settings_key: str
    ) -> int:
        """Make a document's chunks exactly new_chunks, cut from the text with text_hash.

        Rows whose text is unchanged are kept with their ids, so their vectors stay valid
        in the built index. Returns how many chunk rows were inserted.
        """
        with self.engine.begin() as connection:
            existing: dict[str, list[int]] = {}
            for chunk_id, chunk_hash in connection.execute(
                select(chunks.c.id, chunks.c.chunk_hash)
                .where(chunks.c.document_id == document_id)
                .order_by(chunks.c.id)
            ):
                existing.setdefault(chunk_hash, []).append(chunk_id)
            inserted = []
            for chunk in new_chunks:
                reusable = existing.get(chunk.chunk_hash)
                if reusable:
                    connection.execute(
                        update(chunks).where(chunks.c.id == reusable.pop(0)).values(ordinal=chunk.ordinal)
                    )
                else:
                    inserted.append(
                        dict(
                            document_id=document_id,
                            ordinal=chunk.ordinal,
                            chunk_hash=chunk.chunk_hash,
                            text=chunk.text,
                            token_count=chunk.token_count,
                        )
                    )
            leftover = [chunk_id for ids in existing.values() for chunk_id in ids]
            if leftover:
                connection.execute(delete(chunks).where(chunks.c.id.in_(leftover)))
            if inserted:
                connection.execute(insert(chunks), inserted)
            connection.execute(
                update(documents)
                .where(documents.c.id == document_id)
                .values(chunked_hash=text_hash, chunk_settings=settings_key)
            )
        return len(inserted)

    # --- embeddings ---------------------------------------------------------------------

    def chunks_to_embed(self, shard: int, shards: int, model_id: str) -> list[tuple[str, str]]:
        """(chunk hash, text) of a shard's active chunks that have no embedding yet, unique by hash."""
        query = (
            select(chunks.c.chunk_hash, func.min(chunks.c.text))
            .join(documents, documents.c.id == chunks.c.document_id)
            .where(documents.c.shard_key % shards == shard, lacks_embedding(model_id))
            .group_by(chunks.c.chunk_hash)
            .order_by(chunks.c.chunk_hash)
        )
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(query)]

    def save_embeddings(self, model_id: str, chunk_hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors; a hash stored meanwhile by another run is left as it is."""
        now = utc_now()
        rows = [
            dict(model_id=model_id, chunk_hash=chunk_hash, vector=vector.astype(np.float32).tobytes(), created_at=now)
            for chunk_hash, vector in zip(chunk_hashes, vectors)
        ]
        if not rows:
            return
        with self.engine.begin() as connection:
            dialect = sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert
            connection.execute(dialect(embeddings).on_conflict_do_nothing(), rows)

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

    def chunk_hits(self, chunk_ids: Sequence[int]) -> dict[int, ChunkHit]:
        """Path and text for chunks, by id; ids of removed chunks are simply absent."""
        if not chunk_ids:
            return {}
        query = (
            select(
                chunks.c.id,
                chunks.c.document_id,
                documents.c.source,
                documents.c.path,
                chunks.c.ordinal,
                chunks.c.text,
            )
            .join(documents, documents.c.id == chunks.c.document_id)
            .where(chunks.c.id.in_([int(chunk_id) for chunk_id in chunk_ids]), documents.c.status == "active")
        )
        with self.engine.connect() as connection:
            return {row.id: ChunkHit(*row) for row in connection.execute(query)}

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


def _set_processed(connection, document_id: str, read_hash: str, **values: object) -> None:
    # A deletion the sensor recorded while the file was being read wins.
    connection.execute(
        update(documents)
        .where(documents.c.id == document_id, documents.c.status != "deleted")
        .values(processed_hash=read_hash, updated_at=utc_now(), **values)
    )


@functools.cache
def shared_store(url: str) -> Store:
    """One Store (and connection pool) per process and URL."""
    return Store(url)


class StoreResource(ConfigurableResource):
    """Dagster face of Store."""

    url: str

    def get(self) -> Store:
        return shared_store(self.url)

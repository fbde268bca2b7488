"""How a shard's chunks are written: replaced at once, or staged until their embeddings exist.

The chunks step writes a page of documents per transaction; publishing a stage and replacing a
document's chunks share replace_live_chunks, which keeps unchanged chunks' ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import Connection, Engine, bindparam, case, delete, insert, select, update

from grace.resources.schema import (
    NewChunk,
    batches,
    chunks,
    documents,
    embeddings,
    remove_chunks,
    staged_chunks,
)


@dataclass(frozen=True)
class ChunkCut:
    """A document's chunks as the chunker cut them from the text with hash text_hash."""

    document_id: str
    text_hash: str
    chunks: Sequence[NewChunk]


class ChunkWrites:
    """Mixed into the store, which provides the engines and _sealed_chunks (the key vault)."""

    engine: Engine
    writer: Engine

    def replace_chunks(
        self, document_id: str, text_hash: str, new_chunks: Sequence[NewChunk], settings_key: str
    ) -> int:
        """Make a document's chunks exactly new_chunks now, dropping any staged ones.

        Returns how many chunk rows were inserted (0 if the document is gone).
        """
        new_chunks = self._sealed_chunks(document_id, new_chunks)
        with self.writer.begin() as connection:
            document = lock_document(connection, document_id)
            if document is None:
                return 0
            connection.execute(delete(staged_chunks).where(staged_chunks.c.document_id == document_id))
            return replace_live_chunks(connection, document, text_hash, new_chunks, settings_key)

    def stage_chunks(
        self, document_id: str, text_hash: str, new_chunks: Sequence[NewChunk], settings_key: str, model_id: str
    ) -> bool:
        """stage_chunks_many for one document."""
        return self.stage_chunks_many([ChunkCut(document_id, text_hash, new_chunks)], settings_key, model_id)[0]

    def stage_chunks_many(self, cuts: Sequence[ChunkCut], settings_key: str, model_id: str) -> list[bool]:
        """Set each document's new chunks aside until their embeddings exist, so its old chunks stay
        searchable meanwhile; publish them at once if every one is embedded already, or if the
        document has no live chunks to keep (new, or fixed after a quarantine).

        One transaction for them all, documents locked in id order (two writers never wait on each
        other in a cycle). Returns, per cut, whether its chunks are live now (False if the
        document is gone).
        """
        sealed = [
            ChunkCut(cut.document_id, cut.text_hash, self._sealed_chunks(cut.document_id, cut.chunks)) for cut in cuts
        ]
        ids = sorted({cut.document_id for cut in sealed})
        with self.writer.begin() as connection:
            locked = {}
            for batch in batches(ids, 500):
                query = _locking_columns().where(documents.c.id.in_(batch)).order_by(documents.c.id)
                locked.update({row.id: row for row in connection.execute(query.with_for_update())})
            with_live = set()
            for batch in batches(ids, 500):
                connection.execute(delete(staged_chunks).where(staged_chunks.c.document_id.in_(batch)))
                with_live.update(
                    connection.execute(
                        select(chunks.c.document_id).where(chunks.c.document_id.in_(batch)).distinct()
                    ).scalars()
                )
            embedded = _embedded_hashes(
                connection,
                model_id,
                {c.chunk_hash for cut in sealed if cut.document_id in with_live for c in cut.chunks},
            )
            live_now, fresh_rows, fresh_documents, staged_rows = [], [], [], []
            for cut in sealed:
                document = locked.get(cut.document_id)
                if document is None:
                    live_now.append(False)
                elif cut.document_id not in with_live:  # nothing to keep searchable: straight in
                    fresh_rows += [dict(document_id=document.id, shard=document.shard, **asdict(c)) for c in cut.chunks]
                    fresh_documents.append(_chunked(document, cut.text_hash, settings_key))
                    live_now.append(True)
                elif all(c.chunk_hash in embedded for c in cut.chunks):
                    replace_live_chunks(connection, document, cut.text_hash, cut.chunks, settings_key)
                    live_now.append(True)
                else:
                    staged_rows += [
                        dict(document_id=document.id, text_hash=cut.text_hash, settings=settings_key, **asdict(c))
                        for c in cut.chunks
                    ]
                    live_now.append(False)
            if fresh_rows:
                connection.execute(insert(chunks), fresh_rows)
            if fresh_documents:
                connection.execute(_MARK_CHUNKED, fresh_documents)
            if staged_rows:
                connection.execute(insert(staged_chunks), staged_rows)
        return live_now


def lock_document(connection: Connection, document_id: str):
    """The document's row, locked until the transaction ends (SQLite's IMMEDIATE begin locks it all)."""
    query = _locking_columns().where(documents.c.id == document_id)
    return connection.execute(query.with_for_update()).first()


def all_embedded(connection: Connection, model_id: str, chunk_hashes: set[str]) -> bool:
    return len(_embedded_hashes(connection, model_id, chunk_hashes)) == len(chunk_hashes)


def replace_live_chunks(
    connection: Connection, document, text_hash: str, new_chunks: Sequence[NewChunk], settings_key: str
) -> int:
    """Make a locked document's chunks exactly new_chunks; return how many rows were inserted.

    Rows whose text is unchanged keep their ids, so their vectors stay valid in the built
    index. Every statement keeps (document_id, ordinal) unique: leftovers go first, and
    reused rows pass through negative ordinals so no two ever share one on the way.
    """
    document_id = document.id
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
            inserted.append(dict(document_id=document_id, shard=document.shard, **asdict(chunk)))
    leftover = [chunk_id for pairs in existing.values() for chunk_id, _ordinal in pairs]
    for batch in batches(leftover, 500):
        remove_chunks(connection, chunks.c.id.in_(batch))
    by_id = chunks.c.id == bindparam("chunk_id")
    if moves:
        connection.execute(update(chunks).where(by_id).values(ordinal=-1 - bindparam("new_ordinal")), moves)
        connection.execute(update(chunks).where(by_id).values(ordinal=bindparam("new_ordinal")), moves)
    if inserted:
        connection.execute(insert(chunks), inserted)
    connection.execute(_MARK_CHUNKED, [_chunked(document, text_hash, settings_key)])
    return len(inserted)


def _locking_columns():
    return select(documents.c.id, documents.c.shard, documents.c.status, documents.c.processed_hash)


def _embedded_hashes(connection: Connection, model_id: str, chunk_hashes: set[str]) -> set[str]:
    found: set[str] = set()
    for batch in batches(sorted(chunk_hashes), 500):
        query = select(embeddings.c.chunk_hash).where(
            embeddings.c.model_id == model_id, embeddings.c.chunk_hash.in_(batch)
        )
        found.update(connection.execute(query).scalars())
    return found


def _chunked(document, text_hash: str, settings_key: str) -> dict:
    return {"chunked_id": document.id, "chunked_from": text_hash, "settings": settings_key}


# Live chunks of the current text hold all of it: the text is stored once, and a re-chunk reads the file.
_MARK_CHUNKED = (
    update(documents)
    .where(documents.c.id == bindparam("chunked_id"))
    .values(
        chunked_hash=bindparam("chunked_from"),
        chunk_settings=bindparam("settings"),
        text=case((documents.c.processed_hash == bindparam("chunked_from"), None), else_=documents.c.text),
    )
)

"""How a shard's chunks are written: made live at once, or staged until their embeddings exist.

The chunks step writes a page of documents per transaction; publishing a stage and replacing a
document's live chunks share replace_live_chunks, which keeps unchanged chunks' ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import Connection, Engine, bindparam, case, delete, insert, select, update

from grace.resources.db.chunk_rows import NewChunk
from grace.resources.db.schema import batches, chunks, documents, embeddings, remove_chunks, staged_chunks
from grace.resources.db.work_left import has_embedding
from grace.resources.store.layout import ShardLayout
from grace.resources.store.lexical import LexicalIndex
from grace.resources.store.texts import SealedText


@dataclass(frozen=True)
class ChunkCut:
    """A document's chunks as the chunker cut them from the text with hash text_hash."""

    document_id: str
    text_hash: str
    chunks: Sequence[NewChunk]


class Chunks:
    """store.chunks: the chunks step's writes, and publishing what it staged once the embeddings exist."""

    def __init__(self, engine: Engine, writer: Engine, layout: ShardLayout, texts: SealedText, lexical: LexicalIndex):
        self.engine = engine
        self.writer = writer
        self.layout = layout
        self.texts = texts  # seals the chunks' text
        self.lexical = lexical  # indexes it, in the same transaction

    def discard_stale_stages(self, shard: int, shards: int, settings_key: str) -> int:
        """Drop staged chunks cut from text or settings a document no longer has (left by a dead run)."""
        self.layout.epoch(shards)
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

    def stage(self, cuts: Sequence[ChunkCut], settings_key: str, model_id: str) -> list[bool]:
        """Set each document's new chunks aside until their embeddings exist, so its old chunks stay
        searchable meanwhile; publish them at once if every one is embedded already, or if the
        document has no live chunks to keep (new, or fixed after a quarantine).

        One transaction for them all, documents locked in id order (two writers never wait on each
        other in a cycle). Returns, per cut, whether its chunks are live now (False if the
        document is gone).
        """
        # Staged chunks get their postings now too: publishing a stage then writes no postings.
        postings = self.lexical.postings((chunk.chunk_hash, chunk.text) for cut in cuts for chunk in cut.chunks)
        sealed = [
            ChunkCut(cut.document_id, cut.text_hash, self.texts.seal_chunks(cut.document_id, cut.chunks))
            for cut in cuts
        ]
        ids = sorted({cut.document_id for cut in sealed})
        with self.writer.begin() as connection:
            self.lexical.write(connection, postings)
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

    def publish_staged(self, shard: int, shards: int, model_id: str) -> int:
        """Swap in the staged chunks of every document of the shard whose staged chunks all have
        embeddings, each document in one transaction. Returns how many documents went live."""
        self.layout.epoch(shards)
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
            new_chunks = [
                NewChunk(
                    row.ordinal, row.chunk_hash, row.text, row.token_count, row.context, row.first_page, row.last_page
                )
                for row in staged
            ]
            replace_live_chunks(connection, document, staged[0].text_hash, new_chunks, staged[0].settings)
            connection.execute(delete(staged_chunks).where(of_document))
        return True


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
    moves, placed, inserted = [], [], []
    for chunk in new_chunks:
        reusable = existing.get(chunk.chunk_hash)
        if reusable:
            chunk_id, ordinal = reusable.pop(0)
            if ordinal != chunk.ordinal:
                moves.append({"chunk_id": chunk_id, "new_ordinal": chunk.ordinal})
            # Same text, so the same vector and index entry; its heading or pages may have moved.
            placed.append(
                {"chunk_id": chunk_id, "placed_in": chunk.context, "first": chunk.first_page, "last": chunk.last_page}
            )
        else:
            inserted.append(dict(document_id=document_id, shard=document.shard, **asdict(chunk)))
    leftover = [chunk_id for pairs in existing.values() for chunk_id, _ordinal in pairs]
    for batch in batches(leftover, 500):
        remove_chunks(connection, chunks.c.id.in_(batch))
    by_id = chunks.c.id == bindparam("chunk_id")
    if moves:
        connection.execute(update(chunks).where(by_id).values(ordinal=-1 - bindparam("new_ordinal")), moves)
        connection.execute(update(chunks).where(by_id).values(ordinal=bindparam("new_ordinal")), moves)
    if placed:
        place = {"context": bindparam("placed_in"), "first_page": bindparam("first"), "last_page": bindparam("last")}
        connection.execute(update(chunks).where(by_id).values(**place), placed)
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

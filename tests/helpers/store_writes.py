"""Single-document store writes the pipeline batches (resources/store/documents.py, chunks.py), for
tests that set up one document's state directly, through the store's public parts and functions."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, update

from grace.resources.db.chunk_rows import NewChunk
from grace.resources.db.schema import (
    DocumentRow,
    ObservedFile,
    chunks,
    document_rows,
    documents,
    remove_chunks,
    staged_chunks,
    utc_now,
)
from grace.resources.db.schema import (
    purge_document as purge_document_rows,
)
from grace.resources.db.work_left import needs_processing
from grace.resources.store.chunks import ChunkCut, lock_document, replace_live_chunks
from grace.resources.store.store import Store


def unprocessed_documents(store: Store, shard: int, shards: int) -> list[DocumentRow]:
    """Documents of a shard whose disk state is newer than what was processed."""
    store.layout.epoch(shards)
    query = document_rows().where(documents.c.shard == shard, needs_processing())
    with store.engine.connect() as connection:
        return [DocumentRow(*row) for row in connection.execute(query)]


def set_document_text(store: Store, document_id: str, read_hash: str, text: str) -> None:
    token = store.texts.seal_document(document_id, text)
    with store.writer.begin() as connection:
        _set_processed(connection, document_id, read_hash, status="active", reason=None, text=token)


def quarantine_document(store: Store, document_id: str, read_hash: str, reason: str) -> None:
    with store.writer.begin() as connection:
        connection.execute(delete(staged_chunks).where(staged_chunks.c.document_id == document_id))
        remove_chunks(connection, chunks.c.document_id == document_id)
        _set_processed(
            connection, document_id, read_hash, status="quarantined", reason=reason, text=None, chunked_hash=None
        )


def replace_chunks(
    store: Store, document_id: str, text_hash: str, new_chunks: Sequence[NewChunk], settings_key: str
) -> int:
    """Make a document's chunks exactly new_chunks now, dropping any staged ones, as publishing a stage
    does; return how many chunk rows were inserted (0 if the document is gone)."""
    postings = store.lexical.postings((chunk.chunk_hash, chunk.text) for chunk in new_chunks)
    sealed = store.texts.seal_chunks(document_id, new_chunks)
    with store.writer.begin() as connection:
        document = lock_document(connection, document_id)
        if document is None:
            return 0
        store.lexical.write(connection, postings)
        connection.execute(delete(staged_chunks).where(staged_chunks.c.document_id == document_id))
        return replace_live_chunks(connection, document, text_hash, sealed, settings_key)


def stage_chunks(
    store: Store, document_id: str, text_hash: str, new_chunks: Sequence[NewChunk], settings_key: str, model_id: str
) -> bool:
    """store.chunks.stage for one document: whether its chunks are live now."""
    [live_now] = store.chunks.stage([ChunkCut(document_id, text_hash, new_chunks)], settings_key, model_id)
    return live_now


def purge_document(store: Store, document_id: str) -> None:
    with store.writer.begin() as connection:
        purge_document_rows(connection, document_id)


def _set_processed(connection, document_id: str, read_hash: str, **values: object) -> None:
    # A deletion the sensor recorded while the file was being read wins.
    connection.execute(
        update(documents)
        .where(documents.c.id == document_id, documents.c.status != "deleted")
        .values(processed_hash=read_hash, updated_at=utc_now(), **values)
    )


def add_live_document(store: Store, path: str, texts: list[str]) -> str:
    """An active document whose live chunks are texts (chunk hashes from the text, as the chunker makes them)."""
    digest = f"hash-{path}-{len(texts)}-{texts[0][:8]}"
    store.ledger.record_scan("docs", [ObservedFile(path, 10, 1, digest)], [], [], [], shards=1)
    document_id = store.ledger.documents_of("docs")[path].id
    set_document_text(store, document_id, digest, " ".join(texts))
    new = [NewChunk(i, f"h-{text}", text, len(text.split())) for i, text in enumerate(texts)]
    replace_chunks(store, document_id, digest, new, "settings")
    return document_id

"""Single-document store writes the pipeline batches (resources/document_writes.py), for tests
that set up one document's state directly."""

from __future__ import annotations

from sqlalchemy import delete, update

from grace.resources.key_tables import DOCUMENT_TEXT
from grace.resources.schema import (
    DocumentRow,
    chunks,
    document_rows,
    documents,
    needs_processing,
    remove_chunks,
    staged_chunks,
    utc_now,
)
from grace.resources.schema import (
    purge_document as purge_document_rows,
)
from grace.resources.store import Store


def unprocessed_documents(store: Store, shard: int, shards: int) -> list[DocumentRow]:
    """Documents of a shard whose disk state is newer than what was processed."""
    store.layout_epoch(shards)
    query = document_rows().where(documents.c.shard == shard, needs_processing())
    with store.engine.connect() as connection:
        return [DocumentRow(*row) for row in connection.execute(query)]


def set_document_text(store: Store, document_id: str, read_hash: str, text: str) -> None:
    token = store._keys().encrypt(text, DOCUMENT_TEXT.aad((document_id,)))
    with store.writer.begin() as connection:
        _set_processed(connection, document_id, read_hash, status="active", reason=None, text=token)


def quarantine_document(store: Store, document_id: str, read_hash: str, reason: str) -> None:
    with store.writer.begin() as connection:
        connection.execute(delete(staged_chunks).where(staged_chunks.c.document_id == document_id))
        remove_chunks(connection, chunks.c.document_id == document_id)
        _set_processed(
            connection, document_id, read_hash, status="quarantined", reason=reason, text=None, chunked_hash=None
        )


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

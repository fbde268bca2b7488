"""What the documents step writes, a transaction per batch of documents rather than per document.

The sensor records a new or changed file as unread (resources/reading.py unread_marker); the
documents step reads it and records the content hash it read as both the processed and the
disk hash, unless the sensor saw the file change again meanwhile: then the disk hash stays the
newer one, and the document stays pending for the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, case, delete, select, update

from grace.resources.key_tables import DOCUMENT_TEXT
from grace.resources.schema import (
    batches,
    changes,
    chunks,
    documents,
    needs_processing,
    remove_chunks,
    staged_chunks,
    utc_now,
)

DOCUMENTS_PER_COMMIT = 500
TEXT_BYTES_PER_COMMIT = 16 << 20  # so that a batch of large files stays small in memory


@dataclass(frozen=True)
class DocumentToRead:
    id: str
    source: str
    path: str
    status: str
    disk_hash: str
    processed_hash: str | None


@dataclass(frozen=True)
class DocumentRead:
    """What the documents step made of one file: text to make the document active with, or a
    problem to quarantine it for, or neither when its content is the one processed already."""

    document_id: str
    seen_hash: str  # the document's disk hash when it was read
    content_hash: str  # what was read: a hash, or a marker for a file that could not be
    text: str | None = None
    problem: str | None = None


class DocumentWrites:
    """Mixed into Store, which provides the engine, layout_epoch (the shard layout) and _keys (the key vault)."""

    engine: Engine
    writer: Engine

    def documents_to_read(self, shard: int, shards: int) -> list[DocumentToRead]:
        """Documents of a shard whose disk state is newer than what was processed, by path."""
        self.layout_epoch(shards)
        query = (
            select(
                documents.c.id,
                documents.c.source,
                documents.c.path,
                documents.c.status,
                documents.c.disk_hash,
                documents.c.processed_hash,
            )
            .where(documents.c.shard == shard, needs_processing())
            .order_by(documents.c.path)
        )
        with self.engine.connect() as connection:
            return [DocumentToRead(*row) for row in connection.execute(query)]

    def purge_deleted(self, document_ids: Sequence[str]) -> int:
        """Remove documents that are still deleted, and their chunks; their vectors become tombstones.

        A document the sensor found again since (pending once more) is kept. Returns how many went.
        """
        purged = 0
        for batch in batches(list(document_ids), DOCUMENTS_PER_COMMIT):
            with self.writer.begin() as connection:
                still_deleted = list(
                    connection.execute(
                        select(documents.c.id)
                        .where(documents.c.id.in_(batch), documents.c.status == "deleted")
                        .order_by(documents.c.id)
                        .with_for_update()
                    ).scalars()
                )
                if still_deleted:
                    connection.execute(delete(staged_chunks).where(staged_chunks.c.document_id.in_(still_deleted)))
                    remove_chunks(connection, chunks.c.document_id.in_(still_deleted))
                    connection.execute(delete(changes).where(changes.c.document_id.in_(still_deleted)))
                    connection.execute(delete(documents).where(documents.c.id.in_(still_deleted)))
            purged += len(still_deleted)
        return purged

    def recording_reads(self, after_commit: Callable[[], None] = lambda: None) -> ReadRecorder:
        """A recorder that commits reads in batches, calling after_commit after each."""
        return ReadRecorder(self, after_commit)

    def record_reads(self, reads: Sequence[DocumentRead]) -> None:
        """Record what was read, in one transaction. A deletion the sensor recorded meanwhile wins."""
        vault = self._keys() if any(read.text is not None for read in reads) else None
        # Sealed before the write transaction opens: the vault may write (a first key version).
        tokens = {
            read.document_id: vault.encrypt(read.text, DOCUMENT_TEXT.aad((read.document_id,)))
            for read in reads
            if read.text is not None
        }
        now = utc_now()
        by_id = update(documents).where(documents.c.id == bindparam("document_id"))
        # The disk hash becomes what was read, unless the sensor saw the file change again meanwhile.
        disk_hash = case(
            (documents.c.disk_hash == bindparam("seen_hash"), bindparam("read_hash")), else_=documents.c.disk_hash
        )
        with self.writer.begin() as connection:
            present = _lock_present(connection, [read.document_id for read in reads])
            activated, quarantined, unchanged = [], [], []
            for read in reads:
                if read.document_id not in present:
                    continue
                values = dict(document_id=read.document_id, seen_hash=read.seen_hash, read_hash=read.content_hash)
                if read.text is not None:
                    activated.append(dict(values, token=tokens[read.document_id]))
                elif read.problem is not None:
                    quarantined.append(dict(values, problem=read.problem))
                else:
                    unchanged.append(values)
            if activated:
                connection.execute(
                    by_id.values(
                        processed_hash=bindparam("read_hash"),
                        disk_hash=disk_hash,
                        status="active",
                        reason=None,
                        text=bindparam("token"),
                        updated_at=now,
                    ),
                    activated,
                )
            if quarantined:
                leaving = [values["document_id"] for values in quarantined]
                connection.execute(delete(staged_chunks).where(staged_chunks.c.document_id.in_(leaving)))
                remove_chunks(connection, chunks.c.document_id.in_(leaving))
                connection.execute(
                    by_id.values(
                        processed_hash=bindparam("read_hash"),
                        disk_hash=disk_hash,
                        status="quarantined",
                        reason=bindparam("problem"),
                        text=None,
                        chunked_hash=None,
                        updated_at=now,
                    ),
                    quarantined,
                )
            if unchanged:  # a touch: the text, chunks and vectors stay as they are
                connection.execute(by_id.values(disk_hash=disk_hash, updated_at=now), unchanged)


def _lock_present(connection, document_ids: list[str]) -> set[str]:
    """Lock the documents' rows until the transaction ends, in id order as the sensor's scans do
    (resources/ledger.py), so that neither waits on the other in a cycle; return those not deleted."""
    query = (
        select(documents.c.id, documents.c.status)
        .where(documents.c.id.in_(document_ids))
        .order_by(documents.c.id)
        .with_for_update()
    )
    return {row.id for row in connection.execute(query) if row.status != "deleted"}


class ReadRecorder:
    """Collects the documents step's reads and records them a batch at a time; flush() records the rest."""

    def __init__(self, store: DocumentWrites, after_commit: Callable[[], None]):
        self.store = store
        self.after_commit = after_commit
        self.pending: list[DocumentRead] = []
        self.pending_bytes = 0

    def activate(self, document: DocumentToRead, content_hash: str, text: str) -> None:
        self._add(DocumentRead(document.id, document.disk_hash, content_hash, text=text))

    def quarantine(self, document: DocumentToRead, content_hash: str, problem: str) -> None:
        self._add(DocumentRead(document.id, document.disk_hash, content_hash, problem=problem))

    def confirm(self, document: DocumentToRead, content_hash: str) -> None:
        """The file holds the content processed already (it was touched, not changed)."""
        self._add(DocumentRead(document.id, document.disk_hash, content_hash))

    def flush(self) -> None:
        if self.pending:
            self.store.record_reads(self.pending)
            self.pending, self.pending_bytes = [], 0
            self.after_commit()

    def _add(self, read: DocumentRead) -> None:
        self.pending.append(read)
        self.pending_bytes += len(read.text or "")
        if len(self.pending) >= DOCUMENTS_PER_COMMIT or self.pending_bytes >= TEXT_BYTES_PER_COMMIT:
            self.flush()

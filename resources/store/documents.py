"""What the documents step writes, a transaction per batch of documents rather than per document.

The sensor records a new or changed file as unread (resources/text/reading.py unread_marker); the
documents step reads it and records the content hash it read as both the processed and the
disk hash, unless the sensor saw the file change again meanwhile: then the disk hash stays the
newer one, and the document stays pending for the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, case, delete, func, select, update

from grace.resources.db.schema import (
    batches,
    changes,
    chunks,
    documents,
    embeddings,
    remove_chunks,
    staged_chunks,
    utc_now,
)
from grace.resources.db.work_left import needs_processing, read_with_other_settings
from grace.resources.store.layout import ShardLayout
from grace.resources.store.texts import SealedText

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
    read_settings: str | None  # the stamp it was read with (resources/text/extraction.py)


@dataclass(frozen=True)
class DocumentRead:
    """What the documents step made of one file: text to make the document active with, or a
    problem to quarantine it for, or neither when its content is the one processed already."""

    document_id: str
    seen_hash: str  # the document's disk hash when it was read
    content_hash: str  # what was read: a hash, or a marker for a file that could not be
    stamp: str | None = None  # the reader and settings it was read with
    text: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class DocumentChunks:
    """A document's row and its live chunks, as the store holds them."""

    status: str  # pending, active, quarantined or deleted
    reason: str | None  # why it is quarantined
    shard: int
    chunk_ids: list[int]  # its live chunks, by id
    embedded: bool  # every distinct text among them has a vector of the model asked about


class Documents:
    """store.documents: the documents step's reads and writes, and what the documents table says of a shard."""

    def __init__(self, engine: Engine, writer: Engine, layout: ShardLayout, texts: SealedText):
        self.engine = engine
        self.writer = writer
        self.layout = layout
        self.texts = texts  # seals the text read

    def documents_to_read(
        self, shard: int, shards: int, stamps_by_source: Mapping[str, Collection[str]] | None = None
    ) -> list[DocumentToRead]:
        """Documents of a shard whose disk state is newer than what was processed, and those read
        with a stamp their source no longer has (stamps_by_source: the stamps it has now), by path."""
        self.layout.epoch(shards)
        pending = needs_processing()
        if stamps_by_source:
            pending = pending | read_with_other_settings(stamps_by_source)
        query = (
            select(
                documents.c.id,
                documents.c.source,
                documents.c.path,
                documents.c.status,
                documents.c.disk_hash,
                documents.c.processed_hash,
                documents.c.read_settings,
            )
            .where(documents.c.shard == shard, pending)
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
        # Sealed before the write transaction opens: the vault may write (a first key version).
        tokens = {
            read.document_id: self.texts.seal_document(read.document_id, read.text)
            for read in reads
            if read.text is not None
        }
        now = utc_now()
        by_id = update(documents).where(documents.c.id == bindparam("document_id"))
        # The disk hash becomes what was read, unless the sensor saw the file change again meanwhile.
        disk_hash = case(
            (documents.c.disk_hash == bindparam("seen_hash"), bindparam("read_hash")), else_=documents.c.disk_hash
        )
        # Read by another reader or with other settings, the same bytes may give other text or sections:
        # cut its chunks again (the old ones answer until the new ones are embedded).
        rechunk_if_read_otherwise = case(
            (documents.c.read_settings == bindparam("stamp"), documents.c.chunked_hash), else_=None
        )
        with self.writer.begin() as connection:
            present = _lock_present(connection, [read.document_id for read in reads])
            activated, quarantined, unchanged = [], [], []
            for read in reads:
                if read.document_id not in present:
                    continue
                values = dict(
                    document_id=read.document_id,
                    seen_hash=read.seen_hash,
                    read_hash=read.content_hash,
                    stamp=read.stamp,
                )
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
                        read_settings=bindparam("stamp"),
                        chunked_hash=rechunk_if_read_otherwise,
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
                        read_settings=bindparam("stamp"),
                        updated_at=now,
                    ),
                    quarantined,
                )
            if unchanged:  # a touch: the text, chunks and vectors stay as they are
                connection.execute(by_id.values(disk_hash=disk_hash, updated_at=now), unchanged)

    def quarantined(self, source: str | None = None) -> list[tuple[str, str, str]]:
        """(source, path, reason) of every quarantined document."""
        query = select(documents.c.source, documents.c.path, documents.c.reason).where(
            documents.c.status == "quarantined"
        )
        if source is not None:
            query = query.where(documents.c.source == source)
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(query.order_by(documents.c.path))]

    def shard_counts(self, shard: int, shards: int) -> dict[str, int]:
        """Document and chunk counts of one shard, straight from the tables."""
        self.layout.epoch(shards)
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

    def chunks_of(self, source: str, path: str, model_id: str) -> DocumentChunks | None:
        """The document at (source, path) and its live chunks, measured against model_id's vectors, in
        one read; None if the store has no row for it."""
        with self.engine.connect() as connection:
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
        return DocumentChunks(row.status, row.reason, row.shard, [chunk.id for chunk in live], embedded == len(hashes))

    def waiting(self) -> dict[str, int]:
        """Across shards: documents recorded but never read (pending), and documents the documents
        step has to read (their file changed, appeared or vanished since): its work left."""
        with self.engine.connect() as connection:
            to_read = connection.execute(select(func.count()).where(needs_processing())).scalar_one()
            pending = connection.execute(select(func.count()).where(documents.c.status == "pending")).scalar_one()
        return {"documents_pending": pending, "documents_to_read": to_read}


def _lock_present(connection, document_ids: list[str]) -> set[str]:
    """Lock the documents' rows until the transaction ends, in id order as the sensor's scans do
    (resources/store/ledger.py), so that neither waits on the other in a cycle; return those not deleted."""
    query = (
        select(documents.c.id, documents.c.status)
        .where(documents.c.id.in_(document_ids))
        .order_by(documents.c.id)
        .with_for_update()
    )
    return {row.id for row in connection.execute(query) if row.status != "deleted"}


class ReadRecorder:
    """Collects the documents step's reads and records them a batch at a time; flush() records the rest."""

    def __init__(self, documents: Documents, after_commit: Callable[[], None]):
        self.documents = documents
        self.after_commit = after_commit
        self.pending: list[DocumentRead] = []
        self.pending_bytes = 0

    def activate(self, document: DocumentToRead, content_hash: str, stamp: str, text: str) -> None:
        self._add(DocumentRead(document.id, document.disk_hash, content_hash, stamp, text=text))

    def quarantine(self, document: DocumentToRead, content_hash: str, stamp: str, problem: str) -> None:
        self._add(DocumentRead(document.id, document.disk_hash, content_hash, stamp, problem=problem))

    def confirm(self, document: DocumentToRead, content_hash: str) -> None:
        """The file holds the content processed already, read as before (it was touched, not changed)."""
        self._add(DocumentRead(document.id, document.disk_hash, content_hash))

    def flush(self) -> None:
        if self.pending:
            self.documents.record_reads(self.pending)
            self.pending, self.pending_bytes = [], 0
            self.after_commit()

    def _add(self, read: DocumentRead) -> None:
        self.pending.append(read)
        self.pending_bytes += len(read.text or "")
        if len(self.pending) >= DOCUMENTS_PER_COMMIT or self.pending_bytes >= TEXT_BYTES_PER_COMMIT:
            self.flush()

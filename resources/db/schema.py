"""Tables, row types and engine set-up of the Grace store."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    select,
)

metadata = MetaData()

documents = Table(
    "documents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("source", String(64), nullable=False),
    Column("path", Text, nullable=False, doc="relative to the source folder, / separated"),
    Column("shard_key", BigInteger, nullable=False, doc="a stable hash of the id"),
    Column("shard", Integer, nullable=False, server_default="0", doc="shard_key % shard_layout.shards"),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("disk_hash", String(64), nullable=False, doc="content hash last seen on disk"),
    Column("processed_hash", String(64), doc="disk_hash that text/status reflect"),
    Column("chunked_hash", String(64), doc="processed_hash the chunks were cut from"),
    Column("chunk_settings", String(128), doc="chunker settings the chunks were cut with"),
    Column("read_settings", String(128), doc="reader and settings the processed content was read with"),
    Column("status", String(16), nullable=False, doc="pending, active, quarantined or deleted"),
    Column("reason", Text, doc="why the document is quarantined"),
    Column("text", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("source", "path", name="uq_documents_source_path"),
)
Index("ix_documents_shard_key", documents.c.shard_key)
Index("ix_documents_shard_status", documents.c.shard, documents.c.status)


def _place_in_document() -> list[Column]:
    """Where a chunk sits in its document (resources/db/chunk_rows.py), for live and staged chunks alike."""
    return [
        Column("context", Text, doc="title and heading path, sealed like the text"),
        Column("first_page", Integer, doc="1-based, for paged documents (PDF)"),
        Column("last_page", Integer),
    ]


chunks = Table(
    "chunks",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("document_id", String(32), ForeignKey("documents.id"), nullable=False, index=True),
    Column("ordinal", Integer, nullable=False),
    Column("chunk_hash", String(64), nullable=False, index=True),
    Column("text", Text, nullable=False),
    Column("token_count", Integer, nullable=False),
    Column("shard", Integer, nullable=False, server_default="0", doc="its document's shard"),
    *_place_in_document(),
    # One writer per document: a second concurrent replace fails here instead of doubling chunks.
    UniqueConstraint("document_id", "ordinal", name="uq_chunks_document_ordinal"),
    # Ids are never reused: a built index may still name a deleted chunk's id.
    sqlite_autoincrement=True,
)

Index("ix_chunks_shard_id", chunks.c.shard, chunks.c.id)

# Chunks that left search since their shard's index was built (see index_delta.py); a rebuild
# clears the rows it saw.
removed_chunks = Table(
    "removed_chunks",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("shard", Integer, nullable=False),
    Column("chunk_id", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)
Index("ix_removed_chunks_shard_id", removed_chunks.c.shard, removed_chunks.c.id)

# The shard count the shard columns hold (see layout.py); epoch moves on with every re-layout.
shard_layout = Table(
    "shard_layout",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False, doc="always 1"),
    Column("shards", Integer, nullable=False),
    Column("epoch", Integer, nullable=False),
)

# Small named values of the store: serving_model, the model whose vectors search answers from.
store_settings = Table(
    "store_settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# An edit's new chunks wait here until all their embeddings exist, then replace the live
# chunks in one transaction: the document never drops out of search in between.
staged_chunks = Table(
    "staged_chunks",
    metadata,
    Column("document_id", String(32), ForeignKey("documents.id"), primary_key=True),
    Column("ordinal", Integer, primary_key=True),
    Column("chunk_hash", String(64), nullable=False, index=True),
    Column("text", Text, nullable=False),
    Column("token_count", Integer, nullable=False),
    Column("text_hash", String(64), nullable=False, doc="processed_hash the chunks were cut from"),
    Column("settings", String(128), nullable=False, doc="chunker settings the chunks were cut with"),
    *_place_in_document(),
)

embeddings = Table(
    "embeddings",
    metadata,
    Column("model_id", String(128), primary_key=True),
    Column("chunk_hash", String(64), primary_key=True),
    Column("vector", LargeBinary, nullable=False, doc="float32, L2-normalized"),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

changes = Table(
    "changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("document_id", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    # Ids are never reused: sensor cursors compare against them.
    sqlite_autoincrement=True,
)
Index("ix_changes_source_id", changes.c.source, changes.c.id)

# One writer per shard: the run holding a shard's row may write the shard; others wait.
shard_leases = Table(
    "shard_leases",
    metadata,
    Column("shard", Integer, primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# Liveness of every Grace run, beating from resource set-up to teardown (waiting runs too):
# a run whose beat stops is dead, and the sensors fail it and request its work again.
run_heartbeats = Table(
    "run_heartbeats",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("shard", Integer, doc="the shard the run writes; NULL for a task run"),
    Column("beat_at", DateTime(timezone=True), nullable=False),
)

# Routed tasks: received -> queued (run_id) -> started -> succeeded | failed. The task_status
# sensor moves them from Dagster's run records; handlers write result or error.
tasks = Table(
    "tasks",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("type", String(64), nullable=False),
    Column("origin", String(64), nullable=False),
    Column("handler", String(64), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("sla_ms", BigInteger, nullable=False),
    Column("payload", Text, nullable=False, doc="canonical JSON"),
    Column("data_size_bytes", BigInteger, nullable=False),
    Column("submitted_via", String(16), nullable=False, doc="cli, inbox, api"),
    Column("claim", String(64), doc="the inbox file claim this task came from"),
    Column("status", String(16), nullable=False),
    Column("run_id", String(64)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("queued_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("queue_wait_ms", BigInteger),
    Column("run_ms", BigInteger),
    Column("sla_met", Boolean),
    Column("result", Text, doc="the handler's JSON result"),
    Column("error", Text),
)
Index("ix_tasks_status", tasks.c.status)
Index("ix_tasks_origin_received", tasks.c.origin, tasks.c.received_at)


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes even for DateTime(timezone=True); Grace stores UTC only."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def shard_key_of(document_id: str) -> int:
    """A stable 31-bit key; modulo the shard count gives the document's shard."""
    return int(hashlib.sha256(document_id.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


@dataclass(frozen=True)
class DocumentRow:
    id: str
    source: str
    path: str
    size: int
    mtime_ns: int
    disk_hash: str
    status: str


@dataclass(frozen=True)
class ObservedFile:
    """A file as a scan saw it."""

    path: str
    size: int
    mtime_ns: int
    disk_hash: str


@dataclass(frozen=True)
class PendingChange:
    """The newest unrequested change per shard of one source."""

    last_change_id: int
    bytes_by_shard: dict[int, int]


def remove_chunks(connection, which: ColumnElement[bool]) -> None:
    """Delete the chunks matching which, logging them as removed for their shard's index."""
    leave_search(connection, which)
    connection.execute(delete(chunks).where(which))


def leave_search(connection, which: ColumnElement[bool]) -> None:
    """Log chunks that stop being searchable (deleted, or their document left) for their shard's index.

    Every way a chunk leaves search goes through here, so that a shard's tombstones are the
    logged chunks its index still holds, and never a pass over the shard.
    """
    connection.execute(
        insert(removed_chunks).from_select(["shard", "chunk_id"], select(chunks.c.shard, chunks.c.id).where(which))
    )


def purge_document(connection, document_id: str) -> None:
    connection.execute(delete(staged_chunks).where(staged_chunks.c.document_id == document_id))
    remove_chunks(connection, chunks.c.document_id == document_id)
    connection.execute(delete(changes).where(changes.c.document_id == document_id))
    connection.execute(delete(documents).where(documents.c.id == document_id))


def new_document_ids(connection, source: str, paths: list[str]) -> list[str]:
    """Ids derived from each document's first path; salted where a renamed document holds one.

    One look-up per 500 paths: a first scan of a large folder creates every document at once.
    """
    first_choices = [_salted_id(source, path, 0) for path in paths]
    taken: set[str] = set()
    for batch in batches(first_choices, 500):
        taken.update(connection.execute(select(documents.c.id).where(documents.c.id.in_(batch))).scalars())
    return [
        _free_salted_id(connection, source, path) if choice in taken else choice
        for path, choice in zip(paths, first_choices)
    ]


def _free_salted_id(connection, source: str, path: str) -> str:
    salt = 1
    while True:
        document_id = _salted_id(source, path, salt)
        if connection.execute(select(documents.c.id).where(documents.c.id == document_id)).first() is None:
            return document_id
        salt += 1


def _salted_id(source: str, path: str, salt: int) -> str:
    return hashlib.sha256(f"{source}\0{path}\0{salt}".encode()).hexdigest()[:32]


def batches(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


WRITING = "grace_writing"  # execution option: this connection's transactions write


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True)


def writer_of(engine: Engine) -> Engine:
    """The same pool, but every transaction takes SQLite's write lock when it begins.

    A deferred transaction that reads first and then writes fails with "database is
    locked" when another writer got there in between; an IMMEDIATE one waits its turn.
    PostgreSQL ignores the option and locks rows with SELECT ... FOR UPDATE instead.
    """
    return engine.execution_options(**{WRITING: True})


def _sqlite_pragmas(connection, _record) -> None:
    # pysqlite would otherwise issue its own deferred BEGIN; _sqlite_begin decides instead.
    connection.isolation_level = None
    # WAL lets the sensor, runs and searches read while one writer commits.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection) -> None:
    # Readers stay deferred so WAL lets them run beside the one writer.
    immediate = connection.get_execution_options().get(WRITING, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def document_rows():
    """SELECT of the columns that make a DocumentRow."""
    return select(
        documents.c.id,
        documents.c.source,
        documents.c.path,
        documents.c.size,
        documents.c.mtime_ns,
        documents.c.disk_hash,
        documents.c.status,
    )

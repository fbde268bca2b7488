"""What the sensors know about files: documents as last seen on disk, and change events."""

from collections.abc import Iterable, Sequence

from sqlalchemy import Engine, bindparam, delete, insert, select, union, update

from grace.resources.schema import (
    DocumentRow,
    ObservedFile,
    PendingChange,
    batches,
    changes,
    chunks,
    document_rows,
    documents,
    lacks_embedding,
    needs_chunking,
    needs_processing,
    new_document_ids,
    purge_document,
    record_change,
    shard_key_of,
    staged_chunks,
    utc_now,
)


class Ledger:
    """The sensor side of the store; Store adds what the pipeline steps read and write."""

    engine: Engine
    writer: Engine  # the same pool; its transactions take SQLite's write lock at BEGIN

    def documents_of(self, source: str) -> dict[str, DocumentRow]:
        """Every known document of a source that still exists on disk, by path."""
        query = document_rows().where(documents.c.source == source, documents.c.status != "deleted")
        with self.engine.connect() as connection:
            return {row.path: DocumentRow(*row) for row in connection.execute(query)}

    def record_scan(
        self,
        source: str,
        changed: Sequence[ObservedFile],
        touched: Sequence[ObservedFile],
        moved: Sequence[tuple[str, str]],
        deleted: Sequence[str],
    ) -> int:
        """Apply what a scan found in one transaction; return the number of change events.

        changed: new or different content. touched: same content, new size/mtime.
        moved: (old path, new path) with identical content. deleted: paths gone from disk.
        A row that vanished since the scan read it (an ingest run purged it) is recorded
        as a new pending document, never lost.
        """
        now = utc_now()
        events = 0
        unknown: list[ObservedFile] = []  # files with no row (new, or purged since the scan)
        involved = {path for pair in moved for path in pair} | set(deleted) | {o.path for o in [*changed, *touched]}
        with self.writer.begin() as connection:
            by_path = {}
            for batch in batches(sorted(involved), 500):
                query = select(documents.c.id, documents.c.path, documents.c.status).where(
                    documents.c.source == source, documents.c.path.in_(batch)
                )
                by_path.update({row.path: row for row in connection.execute(query)})
            for old_path, new_path in moved:
                stale = by_path.get(new_path)
                if stale is not None:
                    purge_document(connection, stale.id)
                # If the old row is gone, the touched entry of new_path records it as new.
                connection.execute(
                    update(documents)
                    .where(documents.c.source == source, documents.c.path == old_path)
                    .values(path=new_path, updated_at=now)
                )
            unknown += _touch(connection, source, touched, now)
            for path in deleted:
                row = by_path.get(path)
                if row is None:
                    continue  # already purged: nothing is left to hide
                connection.execute(
                    update(documents).where(documents.c.id == row.id).values(status="deleted", updated_at=now)
                )
                events += record_change(connection, source, row.id, 0, now)
            for observed in changed:
                row = by_path.get(observed.path)
                values = dict(
                    size=observed.size, mtime_ns=observed.mtime_ns, disk_hash=observed.disk_hash, updated_at=now
                )
                if row is not None:
                    if row.status == "deleted":
                        values["status"] = "pending"
                    updated = connection.execute(update(documents).where(documents.c.id == row.id).values(**values))
                    if updated.rowcount == 1:
                        events += record_change(connection, source, row.id, observed.size, now)
                        continue
                unknown.append(observed)
            events += _record_new(connection, source, unknown, now)
        return events

    def shards_needing_ingest(self, source: str, shards: int, settings_key: str, model_id: str) -> set[int]:
        """Shards where a source's documents still have work for the ingest job at any step."""
        by_document = select((documents.c.shard_key % shards).label("shard")).where(
            documents.c.source == source, needs_processing() | needs_chunking(settings_key)
        )
        by_chunk = (
            select((documents.c.shard_key % shards).label("shard"))
            .join(chunks, chunks.c.document_id == documents.c.id)
            .where(documents.c.source == source, lacks_embedding(model_id))
        )
        # Staged chunks wait for the embeddings step to publish them, or the chunks step to discard them.
        by_stage = (
            select((documents.c.shard_key % shards).label("shard"))
            .join(staged_chunks, staged_chunks.c.document_id == documents.c.id)
            .where(documents.c.source == source)
        )
        with self.engine.connect() as connection:
            return set(connection.execute(union(by_document, by_chunk, by_stage)).scalars())

    def documents_at(self, source: str, paths: Iterable[str]) -> dict[str, DocumentRow]:
        """Known, undeleted documents of a source at exactly these paths."""
        found: dict[str, DocumentRow] = {}
        with self.engine.connect() as connection:
            for batch in batches(sorted(paths), 500):
                query = document_rows().where(
                    documents.c.source == source, documents.c.status != "deleted", documents.c.path.in_(batch)
                )
                found.update({row.path: DocumentRow(*row) for row in connection.execute(query)})
        return found

    def documents_under(self, source: str, folder: str) -> dict[str, DocumentRow]:
        """Known, undeleted documents of a source inside a folder (relative, / separated)."""
        query = document_rows().where(
            documents.c.source == source,
            documents.c.status != "deleted",
            documents.c.path.startswith(folder.rstrip("/") + "/", autoescape=True),
        )
        with self.engine.connect() as connection:
            return {row.path: DocumentRow(*row) for row in connection.execute(query)}

    def pending_changes(self, source: str, after_change_id: int, shards: int) -> PendingChange:
        """Changes of a source newer than a sensor cursor, summed by shard."""
        query = (
            select(changes.c.id, changes.c.size, documents.c.shard_key)
            .join(documents, documents.c.id == changes.c.document_id)
            .where(changes.c.source == source, changes.c.id > after_change_id)
        )
        last, by_shard = after_change_id, {}
        with self.engine.connect() as connection:
            for change_id, size, shard_key in connection.execute(query):
                last = max(last, change_id)
                shard = shard_key % shards
                by_shard[shard] = by_shard.get(shard, 0) + size
        return PendingChange(last, by_shard)

    def forget_changes(self, source: str, up_to_change_id: int) -> None:
        """Drop change events a sensor has turned into run requests."""
        with self.writer.begin() as connection:
            connection.execute(delete(changes).where(changes.c.source == source, changes.c.id <= up_to_change_id))

    def retire_other_sources(self, keep: Sequence[str]) -> int:
        """Hide the documents of sources no longer in grace.yaml, as if their files were deleted.

        They leave search at once; the next ingest run of their shard removes the rows.
        """
        with self.writer.begin() as connection:
            result = connection.execute(
                update(documents)
                .where(documents.c.source.not_in(list(keep)), documents.c.status != "deleted")
                .values(status="deleted", updated_at=utc_now())
            )
        return result.rowcount


def _touch(connection, source: str, touched: Sequence[ObservedFile], now) -> list[ObservedFile]:
    """Record new size and mtime for unchanged content in one statement; return the files whose
    row is gone (purged since the scan read it), which must be recorded as new."""
    if not touched:
        return []
    connection.execute(
        update(documents)
        .where(documents.c.source == source, documents.c.path == bindparam("touched_path"))
        .values(size=bindparam("touched_size"), mtime_ns=bindparam("touched_mtime"), updated_at=now),
        [dict(touched_path=item.path, touched_size=item.size, touched_mtime=item.mtime_ns) for item in touched],
    )
    present: set[str] = set()
    for batch in batches([item.path for item in touched], 500):
        present.update(
            connection.execute(
                select(documents.c.path).where(documents.c.source == source, documents.c.path.in_(batch))
            ).scalars()
        )
    return [item for item in touched if item.path not in present]


def _record_new(connection, source: str, observed: Sequence[ObservedFile], now) -> int:
    """Insert pending documents, and a change event each, for files the store has no row for."""
    if not observed:
        return 0
    document_ids = new_document_ids(connection, source, [item.path for item in observed])
    connection.execute(
        insert(documents),
        [
            dict(
                id=document_id,
                source=source,
                path=item.path,
                shard_key=shard_key_of(document_id),
                size=item.size,
                mtime_ns=item.mtime_ns,
                disk_hash=item.disk_hash,
                status="pending",
                updated_at=now,
            )
            for document_id, item in zip(document_ids, observed)
        ],
    )
    connection.execute(
        insert(changes),
        [
            dict(source=source, document_id=document_id, size=item.size, recorded_at=now)
            for document_id, item in zip(document_ids, observed)
        ],
    )
    return len(observed)

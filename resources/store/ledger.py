"""What the sensors know about files: documents as last seen on disk, change events, and the files
of each watched folder that no pattern matches."""

import json
from collections.abc import Collection, Iterable, Mapping, Sequence

from sqlalchemy import Engine, bindparam, case, delete, func, insert, or_, select, union, update

from grace.resources.db.schema import (
    DocumentRow,
    ObservedFile,
    PendingChange,
    batches,
    changes,
    chunks,
    document_rows,
    documents,
    leave_search,
    new_document_ids,
    purge_document,
    remove_chunks,
    shard_key_of,
    staged_chunks,
    store_settings,
    utc_now,
)
from grace.resources.db.work_left import (
    REFUSED_BY_SCAN,
    lacks_embedding,
    needs_chunking,
    needs_processing,
    read_with_other_settings,
)
from grace.resources.store.layout import ShardLayout
from grace.resources.store.not_read import NOT_READ, capped, change_not_read


class Ledger:
    """store.ledger: the sensor side of the store, what is known of the files on disk and their changes."""

    def __init__(self, engine: Engine, writer: Engine, layout: ShardLayout):
        self.engine = engine
        self.writer = writer  # the same pool; its transactions take SQLite's write lock at BEGIN
        self.layout = layout

    def documents_of(self, source: str) -> dict[str, DocumentRow]:
        """Every known document of a source that still exists on disk, by path."""
        query = document_rows().where(documents.c.source == source, documents.c.status != "deleted")
        with self.engine.connect() as connection:
            return {row.path: DocumentRow(*row) for row in connection.execute(query)}

    def active_count(self, source: str) -> int:
        """A source's active documents: read, and searchable."""
        query = select(func.count()).where(documents.c.source == source, documents.c.status == "active")
        with self.engine.connect() as connection:
            return connection.execute(query).scalar_one()

    def record_scan(
        self,
        source: str,
        changed: Sequence[ObservedFile],
        touched: Sequence[ObservedFile],
        moved: Sequence[tuple[str, str]],
        deleted: Sequence[str],
        shards: int,
    ) -> int:
        """Apply what a scan found in one transaction; return the number of change events.

        changed: new or different content. touched: same content, new size/mtime.
        moved: (old path, new path) with identical content. deleted: paths gone from disk.
        A row that vanished since the scan read it (an ingest run purged it) is recorded
        as a new pending document, never lost. Rows are written a statement per batch, not
        per file: a first scan records a whole folder.
        """
        self.layout.epoch(shards)
        now = utc_now()
        involved = {path for pair in moved for path in pair} | set(deleted) | {o.path for o in [*changed, *touched]}
        with self.writer.begin() as connection:
            by_path = _locked_rows(connection, source, sorted(involved))
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
            unknown = _touch(connection, source, touched, now)
            gone = [by_path[path].id for path in deleted if path in by_path]  # the others are purged already
            for batch in batches(gone, 500):
                leave_search(connection, chunks.c.document_id.in_(batch))
                connection.execute(
                    update(documents).where(documents.c.id.in_(batch)).values(status="deleted", updated_at=now)
                )
            rewritten = [(by_path[o.path].id, o) for o in changed if o.path in by_path]
            unknown += [o for o in changed if o.path not in by_path]
            if rewritten:
                connection.execute(
                    update(documents)
                    .where(documents.c.id == bindparam("document_id"))
                    .values(
                        size=bindparam("new_size"),
                        mtime_ns=bindparam("new_mtime"),
                        disk_hash=bindparam("new_hash"),
                        status=case((documents.c.status == "deleted", "pending"), else_=documents.c.status),
                        updated_at=now,
                    ),
                    [
                        dict(document_id=i, new_size=o.size, new_mtime=o.mtime_ns, new_hash=o.disk_hash)
                        for i, o in rewritten
                    ],
                )
            _record_changes(connection, source, [(i, 0) for i in gone] + [(i, o.size) for i, o in rewritten], now)
            return len(gone) + len(rewritten) + _record_new(connection, source, unknown, shards, now)

    def shards_needing_ingest(
        self, source: str, shards: int, settings_key: str, model_id: str, read_stamps: Collection[str] = ()
    ) -> set[int]:
        """Shards where a source's documents still have work for the ingest job at any step; with
        read_stamps (its stamps today), also those read with a reader or settings it no longer has."""
        self.layout.epoch(shards)
        to_do = needs_processing() | needs_chunking(settings_key)
        if read_stamps:
            to_do = to_do | read_with_other_settings({source: read_stamps})
        by_document = select(documents.c.shard).where(documents.c.source == source, to_do)
        by_chunk = (
            select(documents.c.shard)
            .join(chunks, chunks.c.document_id == documents.c.id)
            .where(documents.c.source == source, lacks_embedding(model_id))
        )
        # Staged chunks wait for the embeddings step to publish them, or the chunks step to discard them.
        by_stage = (
            select(documents.c.shard)
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

    def paths_ending(self, source: str, folder: str, suffixes: tuple[str, ...]) -> list[str]:
        """Recorded paths of a source inside folder whose names end with one of suffixes (deleted ones too)."""
        prefix = folder.rstrip("/") + "/" if folder else ""
        query = select(documents.c.path).where(
            documents.c.source == source,
            documents.c.path.startswith(prefix, autoescape=True),
            or_(*(documents.c.path.endswith(suffix, autoescape=True) for suffix in suffixes)),
        )
        with self.engine.connect() as connection:
            return sorted(connection.execute(query).scalars())

    def pending_changes(self, source: str, after_change_id: int, shards: int) -> PendingChange:
        """Changes of a source newer than a sensor cursor, summed by shard."""
        self.layout.epoch(shards)
        query = (
            select(changes.c.id, changes.c.size, documents.c.shard)
            .join(documents, documents.c.id == changes.c.document_id)
            .where(changes.c.source == source, changes.c.id > after_change_id)
        )
        last, by_shard = after_change_id, {}
        with self.engine.connect() as connection:
            for change_id, size, shard in connection.execute(query):
                last = max(last, change_id)
                by_shard[shard] = by_shard.get(shard, 0) + size
        return PendingChange(last, by_shard)

    def forget_changes(self, source: str, up_to_change_id: int) -> None:
        """Drop change events a sensor has turned into run requests."""
        with self.writer.begin() as connection:
            connection.execute(delete(changes).where(changes.c.source == source, changes.c.id <= up_to_change_id))

    def retire_other_sources(self, keep: Sequence[str]) -> int:
        """Hide the documents of sources no longer in grace.yaml, as if their files were deleted.

        They leave search at once; the next ingest run of their shard removes the rows. Their counts of
        files not read are dropped.
        """
        retiring = documents.c.source.not_in(list(keep)) & (documents.c.status != "deleted")
        with self.writer.begin() as connection:
            change_not_read(connection, lambda counts: {source: counts[source] for source in keep if source in counts})
            leave_search(connection, chunks.c.document_id.in_(select(documents.c.id).where(retiring)))
            result = connection.execute(
                update(documents).where(retiring).values(status="deleted", updated_at=utc_now())
            )
        return result.rowcount

    def not_read(self) -> dict[str, dict[str, int]]:
        """Per source, the files its last full scan found matching no pattern and no exclude, by suffix."""
        with self.engine.connect() as connection:
            value = connection.execute(
                select(store_settings.c.value).where(store_settings.c.name == NOT_READ)
            ).scalar_one_or_none()
        return json.loads(value) if value else {}

    def record_not_read(self, source: str, by_suffix: Mapping[str, int]) -> None:
        """Replace a source's counts of files not read with a full scan's (none: the source is dropped).

        Only the NOT_READ_SUFFIXES most frequent suffixes are kept; the rest are summed as OTHER_SUFFIXES.
        Most full scans find what the last one did, and write nothing.
        """
        kept = capped(by_suffix)
        if self.not_read().get(source, {}) == kept:
            return

        def replaced(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
            others = {name: found for name, found in counts.items() if name != source}
            return {**others, source: kept} if kept else others

        with self.writer.begin() as connection:
            change_not_read(connection, replaced)

    def record_quarantined(self, source: str, refused: Sequence[tuple[ObservedFile, str]], shards: int) -> None:
        """Record files as quarantined documents in one transaction, each (the file, whose disk hash is
        a marker, and the reason); no run is needed: the marker is recorded as processed too.

        A deleted row not yet purged at the path takes the file, its chunks removed so that they do
        not come back with it.
        """
        self.layout.epoch(shards)
        now = utc_now()
        with self.writer.begin() as connection:
            for observed, reason in refused:
                _record_quarantined(connection, source, observed, reason, shards, now)


def _record_quarantined(connection, source: str, observed: ObservedFile, reason: str, shards: int, now) -> None:
    values = dict(
        size=observed.size,
        mtime_ns=observed.mtime_ns,
        disk_hash=observed.disk_hash,
        processed_hash=observed.disk_hash,
        chunked_hash=None,
        status="quarantined",
        reason=reason,
        text=None,
        read_settings=REFUSED_BY_SCAN,
        updated_at=now,
    )
    existing = connection.execute(
        select(documents.c.id).where(documents.c.source == source, documents.c.path == observed.path)
    ).first()
    if existing is None:
        [document_id] = new_document_ids(connection, source, [observed.path])
        connection.execute(
            insert(documents).values(
                id=document_id,
                source=source,
                path=observed.path,
                shard_key=shard_key_of(document_id),
                shard=shard_key_of(document_id) % shards,
                **values,
            )
        )
    else:  # a deleted row not yet purged: its chunks must not come back with it
        remove_chunks(connection, chunks.c.document_id == existing.id)
        connection.execute(update(documents).where(documents.c.id == existing.id).values(**values))


def _locked_rows(connection, source: str, paths: list[str]) -> dict:
    """id and path of the source's rows at these paths, locked until the transaction ends, so that
    no ingest run purges one in between (SQLite's IMMEDIATE begin has locked the whole store).

    Locked in id order, as the documents step locks its batches (resources/store/documents.py):
    two transactions that take row locks in one order never deadlock.
    """
    ids = []
    for batch in batches(paths, 500):
        ids += connection.execute(
            select(documents.c.id).where(documents.c.source == source, documents.c.path.in_(batch))
        ).scalars()
    found = {}
    for batch in batches(sorted(ids), 500):
        query = (
            select(documents.c.id, documents.c.path)
            .where(documents.c.id.in_(batch))
            .order_by(documents.c.id)
            .with_for_update()
        )
        found.update({row.path: row for row in connection.execute(query)})
    return found


def _record_changes(connection, source: str, sizes: Sequence[tuple[str, int]], now) -> None:
    """A change event per (document id, size): what the sensor turns into run requests."""
    if sizes:
        connection.execute(
            insert(changes),
            [dict(source=source, document_id=document_id, size=size, recorded_at=now) for document_id, size in sizes],
        )


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


def _record_new(connection, source: str, observed: Sequence[ObservedFile], shards: int, now) -> int:
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
                shard=shard_key_of(document_id) % shards,
                size=item.size,
                mtime_ns=item.mtime_ns,
                disk_hash=item.disk_hash,
                status="pending",
                updated_at=now,
            )
            for document_id, item in zip(document_ids, observed)
        ],
    )
    _record_changes(
        connection, source, [(document_id, item.size) for document_id, item in zip(document_ids, observed)], now
    )
    return len(observed)

"""Which chunks a search filter lets through: source, time and page tested in SQL, path and type by
glob, the heading in its decrypted context. Each chunk is decided once per query, so a search that
widens its candidates asks only about the new ones."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select

from grace.core.search_filter import SearchFilter
from grace.resources.db.chunk_rows import parse_context
from grace.resources.db.key_tables import CHUNK_CONTEXT, DecryptionError
from grace.resources.db.schema import chunks, documents
from grace.resources.store.texts import SealedText

FILTER_BATCH = 2_000  # chunk ids per look-up: well under SQLite's and PostgreSQL's bound-parameter limits


def nanoseconds(moment: datetime) -> int:
    """A moment as the store keeps file times (documents.mtime_ns), without a float's rounding."""
    whole = int(moment.timestamp() // 1)
    return whole * 1_000_000_000 + moment.microsecond * 1_000


class ChunkFilter:
    """A SearchFilter applied to chunk ids of active documents."""

    def __init__(self, texts: SealedText, search_filter: SearchFilter):
        self.texts = texts
        self.filter = search_filter
        self._decided: dict[int, bool] = {}

    def allowed(self, chunk_ids: Iterable[int]) -> set[int]:
        """The given chunks the filter lets through."""
        wanted = [int(chunk_id) for chunk_id in chunk_ids]
        unknown = list(dict.fromkeys(chunk_id for chunk_id in wanted if chunk_id not in self._decided))
        for start in range(0, len(unknown), FILTER_BATCH):
            batch = unknown[start : start + FILTER_BATCH]
            passed = self._passing(batch)
            self._decided.update((chunk_id, chunk_id in passed) for chunk_id in batch)
        return {chunk_id for chunk_id in wanted if self._decided[chunk_id]}

    def _passing(self, batch: list[int]) -> set[int]:
        wanted = self.filter
        query = (
            select(chunks.c.id, chunks.c.document_id, chunks.c.chunk_hash, chunks.c.context, documents.c.path)
            .join(documents, documents.c.id == chunks.c.document_id)
            .where(chunks.c.id.in_(batch), documents.c.status == "active")
        )
        if wanted.source is not None:
            query = query.where(documents.c.source == wanted.source)
        if wanted.modified_after is not None:
            query = query.where(documents.c.mtime_ns >= nanoseconds(wanted.modified_after))
        if wanted.modified_before is not None:
            query = query.where(documents.c.mtime_ns < nanoseconds(wanted.modified_before))
        if wanted.page is not None:
            query = query.where(chunks.c.first_page <= wanted.page, chunks.c.last_page >= wanted.page)
        with self.texts.engine.connect() as connection:
            rows = [row for row in connection.execute(query) if wanted.path_matches(row.path)]
        if wanted.heading is None:
            return {row.id for row in rows}
        vault = self.texts.keys()
        passed = set()
        for row in rows:
            if row.context is None:
                continue
            try:
                context = vault.decrypt(row.context, CHUNK_CONTEXT.aad((row.document_id, row.chunk_hash)))
            except DecryptionError:
                continue  # left out here as chunk_hits leaves it out, which warns and audits it
            if wanted.heading_matches(parse_context(context)[1]):
                passed.add(row.id)
        return passed

"""What each ingest step has left, as SQL conditions defined once: the steps read by them, and
progress totals, `grace status` and the sensors count by them, so the two never drift apart."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlalchemy import ColumnElement, false, or_, select

from grace.resources.db.schema import chunks, documents, embeddings


def needs_processing() -> ColumnElement[bool]:
    """A document whose file changed, appeared or vanished since the documents step saw it."""
    return (
        documents.c.status.in_(["pending", "deleted"])
        | documents.c.processed_hash.is_(None)
        | (documents.c.processed_hash != documents.c.disk_hash)
    )


# The stamp of a file the scan refused before any reader saw it (its name): no reader setting changes that.
REFUSED_BY_SCAN = "refused by the scan"


def read_with_other_settings(stamps_by_source: Mapping[str, Collection[str]]) -> ColumnElement[bool]:
    """A document read with a reader version or reader settings its source no longer has (a stamp of
    resources/text/extraction.py); documents of sources not named are left alone."""

    # A quarantine with no stamp is from before stamps, or the scan's: it is looked at when its file changes.
    def stale(source: str, stamps: Collection[str]) -> ColumnElement[bool]:
        otherwise = documents.c.read_settings.not_in([*sorted(stamps), REFUSED_BY_SCAN])
        active = (documents.c.status == "active") & (documents.c.read_settings.is_(None) | otherwise)
        quarantined = (documents.c.status == "quarantined") & documents.c.read_settings.is_not(None) & otherwise
        return (documents.c.source == source) & (active | quarantined)

    return or_(false(), *(stale(source, stamps) for source, stamps in sorted(stamps_by_source.items())))


def needs_chunking(settings_key: str) -> ColumnElement[bool]:
    """An active document whose chunks were cut from other text or with other settings."""
    return (documents.c.status == "active") & (
        documents.c.chunked_hash.is_(None)
        | (documents.c.chunked_hash != documents.c.processed_hash)
        | (documents.c.chunk_settings != settings_key)
    )


def has_embedding(model_id: str, chunk_hash: ColumnElement[str] = chunks.c.chunk_hash) -> ColumnElement[bool]:
    """The chunk (live by default, or staged) has a vector from this model.

    An EXISTS probe, not a join: joined on model_id, SQLite's planner walks every
    embedding of the model first, which is quadratic with an IN list of chunk ids.
    """
    return (
        select(embeddings.c.chunk_hash)
        .where(embeddings.c.model_id == model_id, embeddings.c.chunk_hash == chunk_hash)
        .exists()
    )


def lacks_embedding(model_id: str) -> ColumnElement[bool]:
    """A chunk of an active document with no vector from this model yet."""
    return (documents.c.status == "active") & ~has_embedding(model_id)

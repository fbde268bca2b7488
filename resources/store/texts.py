"""Text in the store: sealed by the key vault on the way in, opened on the way out.

Every read that returns text decrypts it after its connection is closed: a failed decryption
writes its audit entry in a transaction of its own, which must never wait on a reader or writer
of the same thread.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from sqlalchemy import ColumnElement, Engine, Row, Select, func, select, tuple_, update

from grace.core.process_caches import PLAINTEXT_SEALED
from grace.core.secrets import SecretError
from grace.resources.db.chunk_rows import ChunkHit, NewChunk, parse_context
from grace.resources.db.key_tables import CHUNK_CONTEXT, CHUNK_TEXT, DOCUMENT_TEXT, DecryptionError
from grace.resources.db.schema import chunks, documents, staged_chunks
from grace.resources.db.work_left import has_embedding, lacks_embedding, needs_chunking
from grace.resources.keys.vault import KeyVault
from grace.resources.store.layout import ShardLayout

PAGE_ROWS = 256  # rows per page of the chunks step, and of the embeddings step unless it asks otherwise
HEADS_PER_READ = 10_000  # (id, size) of documents to chunk per read, cut into pages: a read may pass over the shard
PAGE_BYTES = 16 << 20  # and about this much text per page, by the files' sizes


@dataclass(frozen=True)
class TextToChunk:
    """An active document whose chunks are out of date. text is None once chunks cut from it went
    live: the text is stored once, in its chunks, and the file holds the whole of it."""

    document_id: str
    text_hash: str
    source: str
    path: str
    text: str | None


class TextNeedsKeys(RuntimeError):
    """Text was to be written or read through a store opened without a key vault."""


class UnreadableText(UserWarning):
    """A stored text did not decrypt (altered, or copied from another row); it was left out."""


class SealedText:
    """store.texts: the text side of the store, sealed by the key vault on the way in and opened on the
    way out. Without a vault, text is refused both ways, so the product never stores plaintext."""

    def __init__(
        self, engine: Engine, writer: Engine, layout: ShardLayout, vault: KeyVault | None, keys_missing: str | None
    ):
        self.engine = engine
        self.writer = writer
        self.layout = layout
        self.vault = vault
        self.keys_missing = keys_missing  # why the KEK could not be had, when the store opened without it

    def keys(self) -> KeyVault:
        """The key vault; SecretError (why the KEK is missing) or TextNeedsKeys on a store without one."""
        if self.vault is not None:
            return self.vault
        if self.keys_missing is not None:
            raise SecretError(self.keys_missing)
        raise TextNeedsKeys(
            "this store was opened without a key vault, and document and chunk text is stored only "
            "encrypted: open it with Store(url, vault), or StoreResource with kek set (build_resources does)"
        )

    def seal_chunks(self, document_id: str, new_chunks: Sequence[NewChunk]) -> list[NewChunk]:
        """The chunks with their text sealed, bound to their row. Seal before any write transaction
        opens: the vault may write (a first key version)."""
        vault = self.keys()
        return [
            replace(
                chunk,
                text=vault.encrypt(chunk.text, CHUNK_TEXT.aad((document_id, chunk.chunk_hash))),
                context=None
                if chunk.context is None
                else vault.encrypt(chunk.context, CHUNK_CONTEXT.aad((document_id, chunk.chunk_hash))),
            )
            for chunk in new_chunks
        ]

    def seal_document(self, document_id: str, text: str) -> str:
        """A document's text sealed, bound to its row; as seal_chunks, before any write transaction."""
        return self.keys().encrypt(text, DOCUMENT_TEXT.aad((document_id,)))

    def documents_to_chunk(
        self, shard: int, shards: int, settings_key: str, page_bytes: int = PAGE_BYTES
    ) -> Iterator[list[TextToChunk]]:
        """Pages of the shard's active documents whose chunks are out of date, by id.

        Each page is one short read of at most PAGE_ROWS documents and about page_bytes of
        text (by file size; a larger document makes a page of its own), opened after the read,
        and holds only documents still out of date when it is read. Pages are keyed by id, not
        offset, so chunking a page never shifts the next one. A text that does not decrypt raises
        DecryptionError (audited): the run fails rather than chunking what is not the document.
        """
        vault = self.keys()
        self.layout.epoch(shards)
        return self._pages_to_chunk(vault, _to_chunk(shard, settings_key), page_bytes)

    def count_documents_to_chunk(self, shard: int, shards: int, settings_key: str) -> int:
        """How many documents documents_to_chunk has ahead of it: the chunks step's progress total."""
        self.layout.epoch(shards)
        with self.engine.connect() as connection:
            return connection.execute(select(func.count()).where(_to_chunk(shard, settings_key))).scalar_one()

    def _pages_to_chunk(
        self, vault: KeyVault, pending: ColumnElement[bool], page_bytes: int
    ) -> Iterator[list[TextToChunk]]:
        after = None
        while True:
            heads = select(documents.c.id, documents.c.size).where(pending).order_by(documents.c.id)
            heads = heads.limit(HEADS_PER_READ)
            with self.engine.connect() as connection:
                sized = connection.execute(heads if after is None else heads.where(documents.c.id > after)).all()
            if not sized:
                return
            for ids in _pages_by_size(sized, page_bytes):
                texts = (
                    select(
                        documents.c.id,
                        documents.c.processed_hash,
                        documents.c.source,
                        documents.c.path,
                        documents.c.text,
                    )
                    .where(documents.c.id.in_(ids), pending)
                    .order_by(documents.c.id)
                )
                with self.engine.connect() as connection:
                    rows = connection.execute(texts).all()
                page = [
                    TextToChunk(
                        id_,
                        text_hash,
                        source,
                        path,
                        None if token is None else vault.decrypt(token, DOCUMENT_TEXT.aad((id_,))),
                    )
                    for id_, text_hash, source, path, token in rows
                ]
                if page:
                    yield page
            after = sized[-1].id

    def release_chunked_texts(self, shard: int, shards: int, settings_key: str) -> int:
        """Drop the stored text of the shard's documents whose live chunks are cut from it with these
        settings: the chunks hold all of it. Returns how many texts went.

        Chunks going live release their text themselves; this catches the rest: texts an older Grace
        kept, and a file read again after it came back to the content its chunks were cut from.
        """
        self.layout.epoch(shards)
        chunked = (
            (documents.c.shard == shard)
            & (documents.c.status == "active")
            & documents.c.text.is_not(None)
            & (documents.c.chunked_hash == documents.c.processed_hash)
            & (documents.c.chunk_settings == settings_key)
        )
        with self.writer.begin() as connection:
            return connection.execute(update(documents).where(chunked).values(text=None)).rowcount

    def chunks_to_embed(
        self, shard: int, shards: int, model_id: str, page_size: int = PAGE_ROWS
    ) -> Iterator[list[tuple[str, str]]]:
        """Pages of (chunk hash, text) of a shard's live, then staged, chunks that have no embedding
        yet, each page unique by hash and one short read of at most page_size chunks.

        Each page is read when the one before was consumed: save a page's embeddings before
        asking for the next and a hash met again (in another document, or staged) is not
        yielded twice. A text that does not decrypt raises DecryptionError (audited): nothing is
        embedded for it.
        """
        vault = self.keys()
        self.layout.epoch(shards)
        live = _live_to_embed(shard, model_id, chunks.c.id, chunks.c.chunk_hash, chunks.c.document_id, chunks.c.text)
        staged = _staged_to_embed(
            shard,
            model_id,
            staged_chunks.c.document_id,
            staged_chunks.c.ordinal,
            staged_chunks.c.chunk_hash,
            staged_chunks.c.text,
        )
        return itertools.chain(
            self._pages_to_embed(vault, live, (chunks.c.id,), page_size),
            self._pages_to_embed(vault, staged, (staged_chunks.c.document_id, staged_chunks.c.ordinal), page_size),
        )

    def count_texts_to_embed(self, shard: int, shards: int, model_id: str) -> int:
        """Distinct texts among the shard's live and staged chunks without a vector of model_id: what
        chunks_to_embed yields, each hash once; the embeddings step's progress total."""
        self.layout.epoch(shards)
        live = _live_to_embed(shard, model_id, chunks.c.chunk_hash)
        staged = _staged_to_embed(shard, model_id, staged_chunks.c.chunk_hash)
        hashes = live.union(staged).subquery()
        with self.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(hashes)).scalar_one()

    def _pages_to_embed(
        self, vault: KeyVault, query: Select, key: tuple[ColumnElement, ...], page_size: int
    ) -> Iterator[list[tuple[str, str]]]:
        """Pages of query, whose rows have a chunk_hash, document_id and text (a token), keyed by key."""
        after = None
        while True:
            page_query = query.order_by(*key).limit(page_size)
            if after is not None:
                page_query = page_query.where(tuple_(*key) > tuple_(*after))
            with self.engine.connect() as connection:
                rows = connection.execute(page_query).all()
            if not rows:
                return
            # Equal hashes are equal texts: one token of each is opened.
            first = {}
            for row in rows:
                first.setdefault(row.chunk_hash, (row.document_id, row.text))
            yield [
                (chunk_hash, vault.decrypt(token, CHUNK_TEXT.aad((document_id, chunk_hash))))
                for chunk_hash, (document_id, token) in first.items()
            ]
            after = tuple(rows[-1]._mapping[column] for column in key)

    def chunk_hits(self, chunk_ids: Sequence[int]) -> dict[int, ChunkHit]:
        """Path and text for chunks, by id; ids of removed chunks are simply absent.

        A chunk whose text does not decrypt is left out too, with an UnreadableText warning (and an
        audit entry): one damaged row never hides the others.
        """
        if not chunk_ids:
            return {}
        vault = self.keys()
        query = (
            select(
                chunks.c.id,
                chunks.c.document_id,
                documents.c.source,
                documents.c.path,
                chunks.c.ordinal,
                chunks.c.text,
                chunks.c.chunk_hash,
                chunks.c.context,
                chunks.c.first_page,
                chunks.c.last_page,
            )
            .join(documents, documents.c.id == chunks.c.document_id)
            .where(chunks.c.id.in_([int(chunk_id) for chunk_id in chunk_ids]), documents.c.status == "active")
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        hits = {}
        for row in rows:
            bound = (row.document_id, row.chunk_hash)
            try:
                text = vault.decrypt(row.text, CHUNK_TEXT.aad(bound))
                context = None if row.context is None else vault.decrypt(row.context, CHUNK_CONTEXT.aad(bound))
            except DecryptionError as error:
                warnings.warn(f"chunk {row.id} of {row.source}:{row.path} left out: {error}", UnreadableText, 2)
                continue
            title, heading = parse_context(context)
            hits[row.id] = ChunkHit(
                row.id,
                row.document_id,
                row.source,
                row.path,
                row.ordinal,
                text,
                title,
                heading,
                row.first_page,
                row.last_page,
            )
        return hits


# What is left for the chunks and embeddings steps, defined once: each step reads these rows, and
# its progress total counts them.


def _to_chunk(shard: int, settings_key: str) -> ColumnElement[bool]:
    """The shard's active documents whose chunks were cut from other text or with other settings."""
    return (documents.c.shard == shard) & needs_chunking(settings_key)


def _live_to_embed(shard: int, model_id: str, *columns: ColumnElement) -> Select:
    """columns of the shard's live chunks of active documents that have no vector of model_id."""
    return (
        select(*columns)
        .join(documents, documents.c.id == chunks.c.document_id)
        .where(chunks.c.shard == shard, lacks_embedding(model_id))
    )


def _staged_to_embed(shard: int, model_id: str, *columns: ColumnElement) -> Select:
    """columns of the staged chunks of the shard's active documents that have no vector of model_id."""
    return (
        select(*columns)
        .join(documents, documents.c.id == staged_chunks.c.document_id)
        .where(
            documents.c.shard == shard,
            documents.c.status == "active",
            ~has_embedding(model_id, staged_chunks.c.chunk_hash),
        )
    )


def _pages_by_size(sized: Sequence[Row], page_bytes: int) -> Iterator[list[str]]:
    """The ids of (id, size) rows, cut into runs of at most PAGE_ROWS and about page_bytes; a larger one runs alone."""
    page: list[str] = []
    total = 0
    for id_, size in sized:
        if page and (total + size > page_bytes or len(page) == PAGE_ROWS):
            yield page
            page, total = [], 0
        page.append(id_)
        total += size
    if page:
        yield page


def seal_plaintext_once(vault: KeyVault, batch_size: int) -> None:
    """Encrypt the text stored before encryption, once per process and vault (PLAINTEXT_SEALED; a probe
    per column if none)."""
    PLAINTEXT_SEALED.get_or_make((vault, batch_size), lambda: _seal_plaintext(vault, batch_size))


def _seal_plaintext(vault: KeyVault, batch_size: int) -> bool:
    sealed = vault.seal_plaintext(batch_size)
    if any(sealed.values()) and vault.engine.dialect.name == "sqlite":
        _drop_freed_pages(vault.engine)
    return True


def _drop_freed_pages(engine: Engine) -> None:
    """Rewrite the SQLite file and empty its WAL: the plaintext just sealed still sat in freed pages.

    A crash between sealing and this leaves that residue until the file is vacuumed.
    """
    connection = engine.raw_connection()  # VACUUM cannot run in the transaction a Connection begins
    try:
        connection.execute("VACUUM")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()

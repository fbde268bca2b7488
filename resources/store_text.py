"""Text in the store: sealed by the key vault on the way in, opened on the way out.

Every read that returns text decrypts it after its connection is closed: a failed decryption
writes its audit entry in a transaction of its own, which must never wait on a reader or writer
of the same thread.
"""

from __future__ import annotations

import copy
import functools
import itertools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Self

from sqlalchemy import ColumnElement, Engine, Row, Select, select, tuple_, update

from grace.core.secrets import SecretError
from grace.resources.key_tables import CHUNK_TEXT, DOCUMENT_TEXT, DecryptionError
from grace.resources.key_vault import KeyVault
from grace.resources.schema import (
    ChunkHit,
    NewChunk,
    chunks,
    documents,
    has_embedding,
    lacks_embedding,
    needs_chunking,
    staged_chunks,
)

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
    """The text side of Store. Without a vault, text is refused both ways, so the product never
    stores plaintext."""

    engine: Engine
    writer: Engine
    vault: KeyVault | None
    keys_missing: str | None = None  # why the KEK could not be had, when the store opened without it

    def with_vault(self, vault: KeyVault) -> Self:
        """This store, on the same engine, sealing and opening text with vault."""
        sealing = copy.copy(self)
        sealing.vault = vault
        return sealing

    def lacking_keys(self, why: str) -> Self:
        """This store, on the same engine, refusing text with why (a SecretError's message)."""
        lacking = copy.copy(self)
        lacking.keys_missing = why
        return lacking

    def _keys(self) -> KeyVault:
        if self.vault is not None:
            return self.vault
        if self.keys_missing is not None:
            raise SecretError(self.keys_missing)
        raise TextNeedsKeys(
            "this store was opened without a key vault, and document and chunk text is stored only "
            "encrypted: open it with Store(url, vault), or StoreResource with kek set (build_resources does)"
        )

    def _sealed_chunks(self, document_id: str, new_chunks: Sequence[NewChunk]) -> list[NewChunk]:
        # Sealed before any write transaction opens: the vault may write (a first key version).
        vault = self._keys()
        return [
            replace(chunk, text=vault.encrypt(chunk.text, CHUNK_TEXT.aad((document_id, chunk.chunk_hash))))
            for chunk in new_chunks
        ]

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
        vault = self._keys()
        self.layout_epoch(shards)
        return self._pages_to_chunk(vault, (documents.c.shard == shard) & needs_chunking(settings_key), page_bytes)

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
        self.layout_epoch(shards)
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
        vault = self._keys()
        self.layout_epoch(shards)
        live = (
            select(chunks.c.id, chunks.c.chunk_hash, chunks.c.document_id, chunks.c.text)
            .join(documents, documents.c.id == chunks.c.document_id)
            .where(chunks.c.shard == shard, lacks_embedding(model_id))
        )
        staged = (
            select(
                staged_chunks.c.document_id, staged_chunks.c.ordinal, staged_chunks.c.chunk_hash, staged_chunks.c.text
            )
            .join(documents, documents.c.id == staged_chunks.c.document_id)
            .where(
                documents.c.shard == shard,
                documents.c.status == "active",
                ~has_embedding(model_id, staged_chunks.c.chunk_hash),
            )
        )
        return itertools.chain(
            self._pages_to_embed(vault, live, (chunks.c.id,), page_size),
            self._pages_to_embed(vault, staged, (staged_chunks.c.document_id, staged_chunks.c.ordinal), page_size),
        )

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
        vault = self._keys()
        query = (
            select(
                chunks.c.id,
                chunks.c.document_id,
                documents.c.source,
                documents.c.path,
                chunks.c.ordinal,
                chunks.c.text,
                chunks.c.chunk_hash,
            )
            .join(documents, documents.c.id == chunks.c.document_id)
            .where(chunks.c.id.in_([int(chunk_id) for chunk_id in chunk_ids]), documents.c.status == "active")
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        hits = {}
        for row in rows:
            try:
                text = vault.decrypt(row.text, CHUNK_TEXT.aad((row.document_id, row.chunk_hash)))
            except DecryptionError as error:
                warnings.warn(f"chunk {row.id} of {row.source}:{row.path} left out: {error}", UnreadableText, 2)
                continue
            hits[row.id] = ChunkHit(row.id, row.document_id, row.source, row.path, row.ordinal, text)
        return hits


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


@functools.cache
def seal_plaintext_once(vault: KeyVault, batch_size: int) -> None:
    """Encrypt the text stored before encryption, once per process and vault (a probe per column if none)."""
    sealed = vault.seal_plaintext(batch_size)
    if any(sealed.values()) and vault.engine.dialect.name == "sqlite":
        _drop_freed_pages(vault.engine)


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

"""Text in the store: sealed by the key vault on the way in, opened on the way out.

Every read that returns text decrypts it after its connection is closed: a failed decryption
writes its audit entry in a transaction of its own, which must never wait on a reader or writer
of the same thread.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Self

from sqlalchemy import Engine, select, union_all

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


class TextNeedsKeys(RuntimeError):
    """Text was to be written or read through a store opened without a key vault."""


class UnreadableText(UserWarning):
    """A stored text did not decrypt (altered, or copied from another row); it was left out."""


class SealedText:
    """The text side of Store. Without a vault, text is refused both ways, so the product never
    stores plaintext."""

    engine: Engine
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

    def documents_to_chunk(self, shard: int, shards: int, settings_key: str) -> list[tuple[str, str, str]]:
        """(document id, text hash, text) of active documents whose chunks are out of date, by id.

        A text that does not decrypt raises DecryptionError (audited): the run fails rather than
        chunking what is not the document.
        """
        vault = self._keys()
        query = (
            select(documents.c.id, documents.c.processed_hash, documents.c.text)
            .where(documents.c.shard_key % shards == shard, needs_chunking(settings_key))
            .order_by(documents.c.id)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [(id_, text_hash, vault.decrypt(token, DOCUMENT_TEXT.aad((id_,)))) for id_, text_hash, token in rows]

    def chunks_to_embed(self, shard: int, shards: int, model_id: str) -> list[tuple[str, str]]:
        """(chunk hash, text) of a shard's live and staged chunks that have no embedding yet, unique by hash.

        A text that does not decrypt raises DecryptionError (audited): nothing is embedded for it.
        """
        vault = self._keys()
        in_shard = documents.c.shard_key % shards == shard
        live = (
            select(chunks.c.chunk_hash, chunks.c.document_id, chunks.c.text)
            .join(documents, documents.c.id == chunks.c.document_id)
            .where(in_shard, lacks_embedding(model_id))
        )
        staged = (
            select(staged_chunks.c.chunk_hash, staged_chunks.c.document_id, staged_chunks.c.text)
            .join(documents, documents.c.id == staged_chunks.c.document_id)
            .where(in_shard, documents.c.status == "active", ~has_embedding(model_id, staged_chunks.c.chunk_hash))
        )
        both = union_all(live, staged).subquery()
        with self.engine.connect() as connection:
            rows = connection.execute(select(both).order_by(both.c.chunk_hash, both.c.document_id)).all()
        # Equal hashes are equal texts: one token of each is opened.
        first = {}
        for chunk_hash, document_id, token in rows:
            first.setdefault(chunk_hash, (document_id, token))
        return [
            (chunk_hash, vault.decrypt(token, CHUNK_TEXT.aad((document_id, chunk_hash))))
            for chunk_hash, (document_id, token) in first.items()
        ]

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

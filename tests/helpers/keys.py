"""Key tests' shared parts: sealed text seeded under a vault, read back, and the test KEK's variable."""

from __future__ import annotations

import os
from datetime import timedelta

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, insert, select

from grace.resources.db.key_tables import CHUNK_TEXT, DOCUMENT_TEXT, token_version
from grace.resources.db.schema import chunks, documents, utc_now
from grace.resources.keys.vault import KeyVault
from grace.resources.store.store import Store
from grace.resources.tasks.builtin_handlers import open_key_vault

DAY = timedelta(days=1)


RUN_ID = "run-under-test"

scratch = MetaData()  # never the store's metadata: the schema comparison of test_migrations must not see it

TEST_KEK_VARIABLE = "GRACE_TEST_KEYS_KEK"  # the environment variable of a test manifest's keys.kek: env:...


def vault_of(manifest, store) -> KeyVault:
    """A vault of its own, as another process would hold: its primary cache is not the job's."""
    return open_key_vault(manifest, store.engine, "test")


def seed_text(vault: KeyVault, documents_count: int = 4, chunks_per_document: int = 5) -> dict[tuple, str]:
    """Encrypted documents and chunks under the vault's primary, sealed as the store seals them;
    {(column, bound values): plaintext}."""
    written, document_rows, chunk_rows = {}, [], []
    for _ in range(documents_count):
        document_id = os.urandom(8).hex()
        plain = f"memo {document_id}: the heron leaves at midnight"
        written[(DOCUMENT_TEXT.name, (document_id,))] = plain
        document_rows.append(
            {
                "id": document_id,
                "source": "docs",
                "path": f"{document_id}.md",
                "shard_key": 1,
                "size": len(plain),
                "mtime_ns": 1,
                "disk_hash": "h",
                "status": "active",
                "updated_at": utc_now(),
                "text": vault.encrypt(plain, DOCUMENT_TEXT.aad((document_id,))),
            }
        )
        for ordinal in range(chunks_per_document):
            chunk_plain, chunk_hash = f"chunk {ordinal} of {document_id}", os.urandom(8).hex()
            written[(CHUNK_TEXT.name, (document_id, chunk_hash))] = chunk_plain
            chunk_rows.append(
                {
                    "document_id": document_id,
                    "ordinal": ordinal,
                    "chunk_hash": chunk_hash,
                    "token_count": 5,
                    "text": vault.encrypt(chunk_plain, CHUNK_TEXT.aad((document_id, chunk_hash))),
                }
            )
    with vault.writer.begin() as connection:
        connection.execute(insert(documents), document_rows)
        connection.execute(insert(chunks), chunk_rows)
    return written


def read_text(vault: KeyVault) -> tuple[dict[tuple, str], set[int]]:
    """(every encrypted value decrypted, {versions the rows are under})."""
    plain, versions = {}, set()
    with vault.engine.connect() as connection:
        for sealed in vault.encrypted_columns:
            query = select(*sealed.bound_to, sealed.column).where(sealed.column.is_not(None))
            for row in connection.execute(query):
                bound, token = tuple(row[:-1]), row[-1]
                plain[(sealed.name, bound)] = vault.decrypt(token, sealed.aad(bound))
                versions.add(token_version(token))
    return plain, versions


notes = Table(
    "scratch_notes",
    scratch,
    Column("doc", String(32), primary_key=True),
    Column("ordinal", Integer, primary_key=True),
    Column("body", Text),
)


def open_vault(store_url: str, kek: bytes, min_decryption_versions: int = 2, source: str = "the test KEK") -> KeyVault:
    engine = Store(store_url).engine
    scratch.create_all(engine)
    return KeyVault(engine, kek, timedelta(days=1), min_decryption_versions, [notes.c.body], lambda: RUN_ID, source)

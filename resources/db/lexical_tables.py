"""The lexical index's tables: keyed hashes of each chunk text's terms, and the key they are hashed with.

Postings belong to a chunk text (its chunk_hash), not to a chunk row, like the vectors: a chunk is
lexically searchable exactly while a live chunk row of an active document holds that text. Terms
are never stored: only HMAC-SHA256(term key, term) cut to TERM_HASH_BYTES. The term key is stored
only wrapped by the KEK, like the data keys (resources/keys/term_key.py).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, LargeBinary, String, Table

from grace.resources.db.schema import metadata

TERM_HASH_BYTES = 16  # 128 bits: no two of a corpus's terms collide in practice

lexical_chunks = Table(
    "lexical_chunks",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("chunk_hash", String(64), nullable=False, unique=True),
    Column("length", Integer, nullable=False, doc="terms in the text, repeats counted (BM25's length)"),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Keyed by term first: a query reads each of its terms' postings as one range of the key.
lexical_terms = Table(
    "lexical_terms",
    metadata,
    Column("term", LargeBinary(TERM_HASH_BYTES), primary_key=True, doc="HMAC-SHA256(term key, term), cut"),
    Column("text_id", BigInteger, primary_key=True, doc="lexical_chunks.id"),
    Column("frequency", Integer, nullable=False),
    sqlite_with_rowid=False,
)
Index("ix_lexical_terms_text_id", lexical_terms.c.text_id)

# One row (id 1): the HMAC key of the terms, nonce || AES-GCM(KEK, key). It never changes: a data
# key rotation leaves it alone, and a KEK rotation rewraps it with the data keys.
lexical_key = Table(
    "lexical_key",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("kek_id", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

"""The lexical index's term key: random, made once per store, stored only wrapped by the KEK.

Terms are indexed as HMAC-SHA256(term key, term) (resources/db/lexical_tables.py), so the database
alone never shows which words a document holds. The key is not a data key: rotating data keys
leaves it, and the postings, as they are; rotating the KEK rewraps it with the data keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from grace.core.secrets import KEY_BYTES
from grace.resources.db.key_tables import NONCE_BYTES, DecryptionError, WrongKek
from grace.resources.db.lexical_tables import TERM_HASH_BYTES, lexical_key
from grace.resources.db.schema import utc_now

_WRAP_AAD = b"grace-term-key"  # a data key's wrapping copied here does not open


def load_term_key(engine: Engine, writer: Engine, kek: AESGCM, kek_id: str, kek_source: str) -> bytes:
    """The store's term key, made on first use (two first uses racing make one)."""
    row = _read(engine)
    if row is None:
        nonce = os.urandom(NONCE_BYTES)
        wrapped = nonce + kek.encrypt(nonce, os.urandom(KEY_BYTES), _WRAP_AAD)
        with writer.begin() as connection:
            dialect = sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert
            values = dict(id=1, wrapped_key=wrapped, kek_id=kek_id, created_at=utc_now())
            connection.execute(dialect(lexical_key).values(**values).on_conflict_do_nothing())
        row = _read(engine)
    if row.kek_id != kek_id:
        raise WrongKek(
            f"the lexical index's term key is wrapped by KEK id {row.kek_id}, not by the KEK from {kek_source} "
            f"(id {kek_id}); the KEK was rotated: restart with the new one"
        )
    try:
        return _unwrap(kek, row.wrapped_key)
    except InvalidTag:
        raise DecryptionError(None, f"the term key does not open under the KEK from {kek_source}") from None


def rewrap_term_key(connection: Connection, old: AESGCM, new: AESGCM, new_id: str) -> bool:
    """Wrap the term key under a new KEK, in the caller's transaction; False if the store has none yet."""
    row = connection.execute(select(lexical_key).where(lexical_key.c.id == 1).with_for_update()).first()
    if row is None:
        return False
    nonce = os.urandom(NONCE_BYTES)
    wrapped = nonce + new.encrypt(nonce, _unwrap(old, row.wrapped_key), _WRAP_AAD)
    connection.execute(update(lexical_key).where(lexical_key.c.id == 1).values(wrapped_key=wrapped, kek_id=new_id))
    return True


def term_hasher(term_key: bytes) -> Callable[[str], bytes]:
    """What a term is stored and looked up as: its HMAC under the term key, cut to TERM_HASH_BYTES."""

    def hash_term(term: str) -> bytes:
        return hmac.new(term_key, term.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()[:TERM_HASH_BYTES]

    return hash_term


def _read(engine: Engine):
    with engine.connect() as connection:
        return connection.execute(select(lexical_key).where(lexical_key.c.id == 1)).first()


def _unwrap(kek: AESGCM, wrapped: bytes) -> bytes:
    return kek.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _WRAP_AAD)

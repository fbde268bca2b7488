"""What the key vault keeps in the store: its tables, row types, token formats, and the errors it raises.

A data key is stored only wrapped: nonce || AES-GCM(KEK, key), with its version as associated
data. An encrypted column holds tokens gk1:<version>:<base64url(nonce || AES-GCM(data key, text))>,
sealed with the row they belong to as associated data (see SealedColumn). The version stays
readable, so SQL can count the rows that still use a version.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    Select,
    String,
    Table,
    Text,
    func,
    insert,
    inspect,
    select,
    tuple_,
)
from sqlalchemy import text as sql_text

from grace.resources.db.schema import as_utc, chunks, documents, metadata, staged_chunks, utc_now


class KeyStatus:
    PRIMARY, DECRYPT_ONLY, DESTROYED = "primary", "decrypt-only", "destroyed"


class KeyEvent:
    """What key_audit.event says happened."""

    VERSION_CREATED, ROTATED, REWRAP_PROGRESS = "version_created", "rotated", "rewrap_progress"
    DESTROYED, DESTROY_REFUSED = "destroyed", "destroy_refused"
    KEK_ROTATED, DECRYPT_FAILED = "kek_rotated", "decrypt_failed"


class KeyVaultError(RuntimeError):
    """A key operation could not be done safely; the message says why and what to do."""


class WrongKek(KeyVaultError):
    """The KEK given is not the one that wrapped the store's data keys."""


class DestroyRefused(KeyVaultError):
    """Destroying the version could make data unreadable."""


class DecryptionError(KeyVaultError):
    def __init__(self, version: int | None, reason: str):
        self.version = version
        self.reason = reason
        under = f"key version {version}" if version is not None else "no key version"
        super().__init__(f"cannot decrypt a value under {under}: {reason}")


TOKEN_PREFIX = "gk1:"
TOKEN_PATTERN = re.compile(r"^gk1:([1-9][0-9]{0,8}):([A-Za-z0-9_-]{38,})$")  # 38 = nonce + GCM tag, unpadded
NONCE_BYTES = 12

key_versions = Table(
    "key_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("wrapped_key", LargeBinary, doc="nonce || AES-GCM(KEK, data key); NULL once destroyed"),
    Column("kek_id", String(16), nullable=False, doc="fingerprint of the KEK that wrapped it, never the KEK"),
    Column("status", String(16), nullable=False, doc="a KeyStatus"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("rotate_after", DateTime(timezone=True), nullable=False),
    Column("destroyed_at", DateTime(timezone=True)),
)
# At most one primary, whatever two rotations racing on two machines do.
Index(
    "uq_key_versions_one_primary",
    key_versions.c.status,
    unique=True,
    sqlite_where=sql_text("status = 'primary'"),
    postgresql_where=sql_text("status = 'primary'"),
)

# Every key event, appended and never changed: the migration adds triggers that refuse UPDATE and DELETE.
key_audit = Table(
    "key_audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("event", String(32), nullable=False, doc="a KeyEvent"),
    Column("version", Integer),
    Column("run_id", String(64)),
    Column("detail", Text, doc="JSON; never plaintext or key material"),
    sqlite_autoincrement=True,
)
Index("ix_key_audit_event", key_audit.c.event, key_audit.c.id)


@dataclass(frozen=True)
class KeyVersion:
    version: int
    status: str
    kek_id: str
    created_at: datetime
    rotate_after: datetime
    destroyed_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> KeyVersion:
        values = {name: getattr(row, name) for name in cls.__dataclass_fields__}
        for name in ("created_at", "rotate_after", "destroyed_at"):
            if values[name] is not None:
                values[name] = as_utc(values[name])  # SQLite hands back naive datetimes
        return cls(**values)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    event: str
    version: int | None
    run_id: str | None
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> AuditEntry:
        return cls(row.id, as_utc(row.at), row.event, row.version, row.run_id, json.loads(row.detail or "{}"))


def kek_id(kek: bytes) -> str:
    """A fingerprint that tells KEKs apart without revealing them."""
    return hmac.new(kek, b"grace-kek-id", hashlib.sha256).hexdigest()[:16]


def wrap_data_key(kek: AESGCM, version: int, data_key: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + kek.encrypt(nonce, data_key, _wrap_aad(version))


def unwrap_data_key(kek: AESGCM, version: int, wrapped: bytes) -> bytes:
    """The data key; cryptography's InvalidTag if kek did not wrap it for this version."""
    return kek.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(version))


def _wrap_aad(version: int) -> bytes:
    # A wrapped key copied onto another version's row does not open.
    return f"grace-data-key:{version}".encode()


def is_ciphertext(value: object) -> bool:
    return isinstance(value, str) and TOKEN_PATTERN.match(value) is not None


def token_version(token: str) -> int | None:
    """The key version a token names; None if the value is not a token."""
    match = TOKEN_PATTERN.match(token) if isinstance(token, str) else None
    return int(match.group(1)) if match else None


def seal(cipher: AESGCM, version: int, plaintext: str, aad: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = nonce + cipher.encrypt(nonce, plaintext.encode(), aad.encode())
    return f"{TOKEN_PREFIX}{version}:{base64.urlsafe_b64encode(sealed).decode().rstrip('=')}"


def open_token(cipher: AESGCM, token: str, aad: str) -> str:
    """The plaintext of a well-formed token; InvalidTag if it was altered or sealed for other aad or key."""
    encoded = token.rsplit(":", 1)[1]
    sealed = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    return cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad.encode()).decode()


def column_name(column: Column) -> str:
    return f"{column.table.name}.{column.name}"


@dataclass(frozen=True)
class SealedColumn:
    """An encrypted column and the values its tokens are bound to, as associated data.

    The associated data is "<label>:<JSON list of the bound values>". Columns that share a label
    accept each other's tokens for the same bound values, so a staged chunk goes live unchanged.
    """

    column: Column
    bound_to: tuple[Column, ...]
    label: str

    @classmethod
    def by_row(cls, column: Column) -> SealedColumn:
        """Bound to the row's primary key: a token opens in its own row only."""
        return cls(column, tuple(column.table.primary_key.columns), column_name(column))

    @property
    def name(self) -> str:
        return column_name(self.column)

    def aad(self, bound_values: Sequence[Any]) -> str:
        return f"{self.label}:{json.dumps(list(bound_values), separators=(',', ':'))}"


def sealed(column: Column | SealedColumn) -> SealedColumn:
    return column if isinstance(column, SealedColumn) else SealedColumn.by_row(column)


def row_binding(column: Column, key_values: Sequence[Any]) -> str:
    """Associated data that ties a token to one column of one row, e.g. documents.text:["ab12"]."""
    return SealedColumn.by_row(column).aad(key_values)


DOCUMENT_TEXT = SealedColumn.by_row(documents.c.text)
# A chunk's text is bound to its document and its plaintext's hash, not to its row id or ordinal:
# a live chunk keeps its row when its ordinal moves, and a staged chunk's token is published into
# chunks as it is. Moved to another document or to a chunk of other text, a token does not open.
CHUNK_TEXT = SealedColumn(chunks.c.text, (chunks.c.document_id, chunks.c.chunk_hash), "chunk.text")
STAGED_CHUNK_TEXT = SealedColumn(
    staged_chunks.c.text, (staged_chunks.c.document_id, staged_chunks.c.chunk_hash), CHUNK_TEXT.label
)
# A chunk's title and heading path, bound as its text is.
CHUNK_CONTEXT = SealedColumn(chunks.c.context, (chunks.c.document_id, chunks.c.chunk_hash), "chunk.context")
STAGED_CHUNK_CONTEXT = SealedColumn(
    staged_chunks.c.context, (staged_chunks.c.document_id, staged_chunks.c.chunk_hash), CHUNK_CONTEXT.label
)
STORE_TEXT = (DOCUMENT_TEXT, CHUNK_TEXT, STAGED_CHUNK_TEXT, CHUNK_CONTEXT, STAGED_CHUNK_CONTEXT)


def under_version(column: Column, version: int | None = None):
    """SQL: the column holds a token (of this version, if given).

    substr, not LIKE: LIKE ignores case on SQLite, and a prefix compare is exact on both backends.
    """
    prefix = TOKEN_PREFIX if version is None else f"{TOKEN_PREFIX}{version}:"
    return func.substr(column, 1, len(prefix)) == prefix


def locked(connection: Connection, query):
    """query FOR UPDATE on PostgreSQL; SQLite's writer transaction already holds the write lock."""
    return query.with_for_update() if connection.dialect.name == "postgresql" else query


def primary_row(connection: Connection) -> Any:
    return connection.execute(select(key_versions).where(key_versions.c.status == KeyStatus.PRIMARY)).first()


def version_row(connection: Connection, version: int, lock: bool = False) -> Any:
    query = select(key_versions).where(key_versions.c.version == version)
    return connection.execute(locked(connection, query) if lock else query).first()


def retired_at(connection: Connection, version: int) -> datetime | None:
    """When the version stopped being primary: its first successor's creation."""
    query = select(func.min(key_versions.c.created_at)).where(key_versions.c.version > version)
    retired = connection.execute(query).scalar_one()
    return as_utc(retired) if retired is not None else None


def append_audit(connection: Connection, event: str, version: int | None, run_id: str | None, detail: dict) -> None:
    row = {"at": utc_now(), "event": event, "version": version, "run_id": run_id, "detail": json.dumps(detail)}
    connection.execute(insert(key_audit).values(**row))


def rows_under(connection: Connection, columns: Sequence[SealedColumn], version: int) -> dict[str, int]:
    """Rows per column (columns with none left out) whose token names this version."""
    counts = {}
    for column in columns:
        query = select(func.count()).select_from(column.column.table).where(under_version(column.column, version))
        counts[column.name] = connection.execute(query).scalar_one()
    return {name: rows for name, rows in counts.items() if rows}


def destroy_refusal(
    connection: Connection,
    version: int,
    now: datetime,
    min_decryption_versions: int,
    columns: Sequence[SealedColumn],
    retired_grace: timedelta,
) -> str | None:
    """Why the version may not be destroyed now, or None; locks its row until the transaction ends."""
    found = version_row(connection, version, lock=True)
    if found is None:
        return "the store has no such version"
    if found.status in (KeyStatus.PRIMARY, KeyStatus.DESTROYED):
        return f"it is {found.status}"
    newest = connection.execute(select(func.max(key_versions.c.version))).scalar_one()
    lowest_kept = newest - min_decryption_versions + 1
    if version >= lowest_kept:
        return (
            f"the newest {min_decryption_versions} versions (min_decryption_versions) stay decryptable; "
            f"only versions below {lowest_kept} may be destroyed"
        )
    retired = retired_at(connection, version)
    if now - retired < retired_grace:
        return f"it was primary until {retired.isoformat()}; a writer may still use it for {retired_grace}"
    in_use = rows_under(connection, columns, version)
    if in_use:
        rows = ", ".join(f"{rows} in {name}" for name, rows in in_use.items())
        return f"rows still use it ({rows}); rewrap them first"
    return None


def holds_key_versions(connection: Connection) -> bool:
    """Whether the store has made any key version, so text may be sealed under one."""
    return connection.execute(select(key_versions.c.version).limit(1)).first() is not None


def live_key_versions(engine: Engine) -> int:
    """Key versions not destroyed in the store (0 for a new store, which has no key tables yet)."""
    if not inspect(engine).has_table(key_versions.name):
        return 0
    live = select(func.count()).select_from(key_versions).where(key_versions.c.status != KeyStatus.DESTROYED)
    with engine.connect() as connection:
        return connection.execute(live).scalar_one()


def holds_plaintext(connection: Connection, column: SealedColumn) -> bool:
    """Whether any value of the column is not a token (text stored before encryption)."""
    query = select(column.column).where(column.column.is_not(None), ~under_version(column.column)).limit(1)
    return connection.execute(query).first() is not None


def stale_values(column: SealedColumn, target: int, which: str, after: Sequence[Any] | None, limit: int) -> Select:
    """(primary key..., bound values..., value) of the next rows after `after` that need sealing
    under version target: which is "tokens" (of other versions), "plaintext", or "both"."""
    keys = list(column.column.table.primary_key.columns)
    value = column.column
    query = select(*keys, *column.bound_to, value).where(value.is_not(None), ~under_version(value, target))
    if which == "tokens":
        query = query.where(under_version(value))
    elif which == "plaintext":
        query = query.where(~under_version(value))
    if after is not None:
        query = query.where(tuple_(*keys) > tuple_(*after))
    return query.order_by(*keys).limit(limit)


def aware_utc(now: datetime | None) -> datetime:
    """now, or the current time, as aware UTC; a naive time is refused rather than guessed."""
    if now is None:
        return utc_now()
    if now.tzinfo is None:
        raise ValueError("key times must be timezone-aware; use datetime.now(UTC)")
    return as_utc(now)

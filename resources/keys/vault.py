"""Text encrypted at rest under versioned data keys, each wrapped by a KEK that never reaches the store.

Old versions stay decryptable until no row uses them; a version is destroyed only when provably
unused. Version creation, rotation, rewrap progress, destruction, KEK rotation and failed
decryptions each leave an entry in the append-only key_audit table, with the run id.
"""

from __future__ import annotations

import binascii
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Column, Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from grace.core.failpoints import failpoint
from grace.core.process_caches import KEY_VAULTS, VAULT_ENGINES
from grace.core.secrets import KEY_BYTES, parse_secret_ref, resolve_secret
from grace.resources.db.key_tables import (
    STORE_TEXT,
    AuditEntry,
    DecryptionError,
    DestroyRefused,
    KeyEvent,
    KeyStatus,
    KeyVaultError,
    KeyVersion,
    SealedColumn,
    WrongKek,
    append_audit,
    aware_utc,
    destroy_refusal,
    holds_plaintext,
    is_ciphertext,
    kek_id,
    key_audit,
    key_versions,
    locked,
    open_token,
    primary_row,
    rows_under,
    seal,
    sealed,
    stale_values,
    token_version,
    unwrap_data_key,
    version_row,
    wrap_data_key,
)
from grace.resources.db.migrations import ensure_head
from grace.resources.db.schema import as_utc, make_engine, writer_of
from grace.resources.keys.term_key import load_term_key, rewrap_term_key

# encrypt() asks the store for the primary version at most this often; rotate() in this process refreshes it.
PRIMARY_TTL_SECONDS = 10.0
# A retired version may still be taken for primary by a process that read it just before the
# rotation, so it may not be destroyed until every such cache has expired.
RETIRED_GRACE = timedelta(seconds=2 * PRIMARY_TTL_SECONDS)
REWRAP_BATCH = 500
# The store's encrypted columns: a version is in use while any of them holds a token of it.
ENCRYPTED_COLUMNS = STORE_TEXT


class KeyVault:
    """Versioned data keys in the store; every change is one transaction with its audit entry."""

    def __init__(
        self,
        engine: Engine,
        kek: bytes,
        rotate_every: timedelta,
        min_decryption_versions: int,
        encrypted_columns: Sequence[Column | SealedColumn] = ENCRYPTED_COLUMNS,
        run_id: Callable[[], str | None] = lambda: None,
        kek_source: str = "the KEK given",
    ):
        if len(kek) != KEY_BYTES:
            raise KeyVaultError(f"the KEK from {kek_source} has {len(kek)} bytes, not {KEY_BYTES}")
        if min_decryption_versions < 1 or rotate_every <= timedelta(0):
            raise KeyVaultError("min_decryption_versions must be at least 1 and rotate_every positive")
        self.engine = engine
        self.writer = writer_of(engine)
        self.rotate_every = rotate_every
        self.min_decryption_versions = min_decryption_versions
        self.encrypted_columns = tuple(sealed(column) for column in encrypted_columns)
        self.run_id = run_id
        self._kek, self._kek_id, self.kek_source = AESGCM(kek), kek_id(kek), kek_source
        self._data_keys: dict[int, AESGCM] = {}
        # (version, monotonic time it was read), shared with the for_run() copies like the data keys
        self._primary: dict[str, tuple[int, float]] = {}
        self._term_key: list[bytes] = []  # shared with the for_run() copies; it never changes
        self._check_kek()

    def for_run(self, run_id: str | None) -> KeyVault:
        """This vault, sharing its data key cache, auditing with run_id."""
        scoped = copy.copy(self)
        scoped.run_id = lambda: run_id
        return scoped

    def ensure_primary(self) -> KeyVersion:
        """The primary version, creating version 1 on first use."""
        return self.primary() or self.rotate() or self.primary()

    def primary(self) -> KeyVersion | None:
        with self.engine.connect() as connection:
            row = primary_row(connection)
        return KeyVersion.from_row(row) if row is not None else None

    def versions(self) -> list[KeyVersion]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(key_versions).order_by(key_versions.c.version))
            return [KeyVersion.from_row(row) for row in rows]

    def encrypt(self, plaintext: str, aad: str) -> str:
        """A token of plaintext under the primary version, bound to aad (the row it is stored in)."""
        version = self._primary_version()
        return seal(self._cipher(version), version, plaintext, aad)

    def decrypt(self, token: str, aad: str) -> str:
        """The plaintext of a token; DecryptionError (and an audit entry) if it does not open with aad."""
        try:
            return self._open(token, aad)
        except DecryptionError as error:
            self._audit_alone(KeyEvent.DECRYPT_FAILED, error.version, {"aad": aad, "reason": error.reason})
            raise

    def term_key(self) -> bytes:
        """The key the lexical index hashes terms with (resources/keys/term_key.py), made on first use."""
        if not self._term_key:
            self._term_key.append(load_term_key(self.engine, self.writer, self._kek, self._kek_id, self.kek_source))
        return self._term_key[0]

    def rotate(self, now: datetime | None = None, force: bool = False) -> KeyVersion | None:
        """A new primary version if the current one is due (or force); None if not due.

        The first call on an empty store creates version 1. Two rotators racing make one version.
        """
        now = aware_utc(now)
        try:
            created = self._rotate(now, force)
        except IntegrityError:  # a concurrent first start or rotation made the version
            return None
        if created is not None:
            self._primary["known"] = (created.version, time.monotonic())
        return created

    def _rotate(self, now: datetime, force: bool) -> KeyVersion | None:
        with self.writer.begin() as connection:
            row = primary_row(connection)
            if row is None:
                created = self._create_version(connection, 1, now)
            else:
                current = KeyVersion.from_row(row)
                if not force and now < current.rotate_after:
                    return None
                demoted = connection.execute(
                    update(key_versions)
                    .where(key_versions.c.version == current.version, key_versions.c.status == KeyStatus.PRIMARY)
                    .values(status=KeyStatus.DECRYPT_ONLY)
                ).rowcount
                if demoted != 1:  # PostgreSQL: a concurrent rotation committed first
                    return None
                newest = connection.execute(select(func.max(key_versions.c.version))).scalar_one()
                created = self._create_version(connection, newest + 1, now)
                reason = "forced" if force and now < current.rotate_after else "due"
                self._audit(connection, KeyEvent.ROTATED, created.version, {"from": current.version, "reason": reason})
        return created

    def rewrap(
        self, column: Column | SealedColumn, batch_size: int = REWRAP_BATCH, include_plaintext: bool = False
    ) -> int:
        """Re-encrypt column's tokens under the primary version, one transaction per batch; rows changed.

        Rows already under the primary are skipped: a run killed between batches leaves every row
        decryptable and a rerun finishes. A plain Column is bound to its row (row_binding);
        include_plaintext also encrypts values that are no tokens yet (a store from before encryption).
        """
        return self._reseal(sealed(column), batch_size, "both" if include_plaintext else "tokens")

    def rewrap_all(self, batch_size: int = REWRAP_BATCH) -> dict[str, int]:
        """Rewrap every encrypted column, plaintext included; rows changed by column name."""
        return {
            column.name: self.rewrap(column, batch_size, include_plaintext=True) for column in self.encrypted_columns
        }

    def seal_plaintext(self, batch_size: int = REWRAP_BATCH) -> dict[str, int]:
        """Encrypt the values that are no tokens yet (text from before encryption), resumably; rows by column.

        Cheap when there are none: one probe per column. Tokens of older versions are left to rewrap.
        """
        with self.engine.connect() as connection:
            stale = [column for column in self.encrypted_columns if holds_plaintext(connection, column)]
        return {column.name: self._reseal(column, batch_size, "plaintext") for column in stale}

    def _reseal(self, column: SealedColumn, batch_size: int, which: str) -> int:
        self.ensure_primary()
        total, after = 0, None
        while True:
            try:
                changed, after = self._rewrap_batch(column, batch_size, which, after)
            except DecryptionError as error:
                detail = {"column": column.name, "reason": error.reason}
                self._audit_alone(KeyEvent.DECRYPT_FAILED, error.version, detail)
                raise
            if after is None:
                return total
            total += changed
            failpoint("rewrap.after_batch")

    def versions_in_use(self) -> dict[int, int]:
        """Rows per key version across the encrypted columns (versions no row uses are left out)."""
        counts = {}
        with self.engine.connect() as connection:
            for version in self.versions():
                counts[version.version] = sum(rows_under(connection, self.encrypted_columns, version.version).values())
        return {version: rows for version, rows in counts.items() if rows}

    def destroy(self, version: int, now: datetime | None = None) -> None:
        """Erase a version's key; DestroyRefused while it is primary, recent, or used by any row."""
        now = aware_utc(now)
        with self.writer.begin() as connection:
            columns, kept = self.encrypted_columns, self.min_decryption_versions
            refusal = destroy_refusal(connection, version, now, kept, columns, RETIRED_GRACE)
            if refusal is None:
                connection.execute(
                    update(key_versions)
                    .where(key_versions.c.version == version)
                    .values(status=KeyStatus.DESTROYED, wrapped_key=None, destroyed_at=now)
                )
                self._audit(connection, KeyEvent.DESTROYED, version, {})
        if refusal is not None:
            self._audit_alone(KeyEvent.DESTROY_REFUSED, version, {"reason": refusal})
            raise DestroyRefused(f"key version {version} was not destroyed: {refusal}")
        self._data_keys.pop(version, None)

    def rotate_kek(self, new_kek: bytes, new_source: str) -> None:
        """Rewrap every live data key under new_kek in one transaction; no encrypted row changes."""
        if len(new_kek) != KEY_BYTES:
            raise KeyVaultError(f"the new KEK from {new_source} has {len(new_kek)} bytes, not {KEY_BYTES}")
        new_wrapper, new_id = AESGCM(new_kek), kek_id(new_kek)
        with self.writer.begin() as connection:
            rows = connection.execute(
                locked(connection, select(key_versions).where(key_versions.c.status != KeyStatus.DESTROYED))
            ).all()
            for row in rows:
                data_key = self._unwrap(row.version, row.wrapped_key)
                connection.execute(
                    update(key_versions)
                    .where(key_versions.c.version == row.version)
                    .values(wrapped_key=wrap_data_key(new_wrapper, row.version, data_key), kek_id=new_id)
                )
            term_key = rewrap_term_key(connection, self._kek, new_wrapper, new_id)
            detail = {"from_kek_id": self._kek_id, "to_kek_id": new_id, "versions": len(rows), "term_key": term_key}
            self._audit(connection, KeyEvent.KEK_ROTATED, None, detail)
        self._kek, self._kek_id, self.kek_source = new_wrapper, new_id, new_source

    def audit_entries(self, after_id: int = 0) -> list[AuditEntry]:
        query = select(key_audit).where(key_audit.c.id > after_id).order_by(key_audit.c.id)
        with self.engine.connect() as connection:
            return [AuditEntry.from_row(row) for row in connection.execute(query)]

    def _check_kek(self) -> None:
        live = select(key_versions.c.kek_id).where(key_versions.c.status != KeyStatus.DESTROYED).distinct()
        with self.engine.connect() as connection:
            stored = sorted(connection.execute(live).scalars())
        if any(other != self._kek_id for other in stored):
            raise WrongKek(
                f"the KEK from {self.kek_source} (id {self._kek_id}) did not wrap this store's data keys (KEK id "
                f"{', '.join(stored)}); use the KEK the store was created with: restore its key file or variable"
            )

    def _primary_version(self) -> int:
        known = self._primary.get("known")
        if known is None or time.monotonic() - known[1] >= PRIMARY_TTL_SECONDS:
            known = self._primary["known"] = (self.ensure_primary().version, time.monotonic())
        return known[0]

    def _create_version(self, connection: Connection, version: int, now: datetime) -> KeyVersion:
        data_key = AESGCM.generate_key(bit_length=256)
        created = KeyVersion(version, KeyStatus.PRIMARY, self._kek_id, now, now + self.rotate_every, None)
        connection.execute(
            insert(key_versions).values(**asdict(created), wrapped_key=wrap_data_key(self._kek, version, data_key))
        )
        self._audit(connection, KeyEvent.VERSION_CREATED, version, {"rotate_after": created.rotate_after.isoformat()})
        return created

    def _cipher(self, version: int) -> AESGCM:
        cached = self._data_keys.get(version)
        if cached is not None:
            return cached
        with self.engine.connect() as connection:
            row = version_row(connection, version)
        if row is None:
            raise DecryptionError(version, "the store has no such key version")
        if row.status == KeyStatus.DESTROYED:
            raise DecryptionError(version, f"the version was destroyed at {as_utc(row.destroyed_at).isoformat()}")
        if row.kek_id != self._kek_id:
            raise WrongKek(
                f"key version {version} is wrapped by KEK id {row.kek_id}, not by the KEK from {self.kek_source} "
                f"(id {self._kek_id}); the KEK was rotated: restart with the new one"
            )
        self._data_keys[version] = AESGCM(self._unwrap(version, row.wrapped_key))
        return self._data_keys[version]

    def _unwrap(self, version: int, wrapped: bytes) -> bytes:
        try:
            return unwrap_data_key(self._kek, version, wrapped)
        except InvalidTag:
            raise DecryptionError(version, f"its data key does not open under the KEK from {self.kek_source}") from None

    def _open(self, token: str, aad: str) -> str:
        version = token_version(token)
        if version is None:
            raise DecryptionError(None, "the value is not a gk1 token")
        try:
            return open_token(self._cipher(version), token, aad)
        except (InvalidTag, binascii.Error):
            raise DecryptionError(
                version, "it does not open: it was altered, copied from another row, or sealed under another key"
            ) from None

    def _rewrap_batch(
        self, column: SealedColumn, batch_size: int, which: str, after: Sequence[Any] | None
    ) -> tuple[int, Sequence[Any] | None]:
        """(rows changed, last key seen) of one batch; last key None when nothing was left."""
        table, value_column = column.column.table, column.column
        keys = list(table.primary_key.columns)
        with self.writer.begin() as connection:
            target = primary_row(connection).version
            query = stale_values(column, target, which, after, batch_size)
            rows = connection.execute(locked(connection, query)).all()
            if not rows:
                return 0, None
            resealed = []
            for row in rows:
                key_values, bound_values, value = tuple(row[: len(keys)]), tuple(row[len(keys) : -1]), row[-1]
                if not is_ciphertext(value) and which == "tokens":
                    continue  # SQL matched the prefix, but the value is no token: not ours to touch
                aad = column.aad(bound_values)
                plaintext = self._open(value, aad) if is_ciphertext(value) else value
                token = seal(self._cipher(target), target, plaintext, aad)
                resealed.append({**{f"key_{i}": v for i, v in enumerate(key_values)}, "was": value, "token": token})
            if resealed:
                # Compare-and-set, though the rows are locked (FOR UPDATE, or SQLite's write lock) until commit.
                matches = [key == bindparam(f"key_{i}") for i, key in enumerate(keys)]
                statement = update(table).where(*matches, value_column == bindparam("was"))
                connection.execute(statement.values({value_column.name: bindparam("token")}), resealed)
            changed = len(resealed)
            self._audit(connection, KeyEvent.REWRAP_PROGRESS, target, {"column": column.name, "rows": changed})
        return changed, tuple(rows[-1][: len(keys)])

    def _audit(self, connection: Connection, event: str, version: int | None, detail: dict[str, Any]) -> None:
        append_audit(connection, event, version, self.run_id(), detail)

    def _audit_alone(self, event: str, version: int | None, detail: dict[str, Any]) -> None:
        with self.writer.begin() as connection:
            self._audit(connection, event, version, detail)


def shared_vault(url: str, kek: str, rotate_every_seconds: int, min_decryption_versions: int) -> KeyVault:
    """One vault (engine and data key cache) per process and setting (KEY_VAULTS); a missing or wrong KEK
    raises, and is not kept."""
    return KEY_VAULTS.get_or_make(
        (url, kek, rotate_every_seconds, min_decryption_versions),
        lambda: KeyVault(
            vault_engine(url),
            resolve_secret(kek),
            timedelta(seconds=rotate_every_seconds),
            min_decryption_versions,
            kek_source=parse_secret_ref(kek).describe(),
        ),
    )


def vault_engine(url: str) -> Engine:
    """The vault's own pool on the store, at the schema's head (VAULT_ENGINES)."""
    return VAULT_ENGINES.get_or_make(url, lambda: _engine_at_head(url))


def _engine_at_head(url: str) -> Engine:
    engine = make_engine(url)
    ensure_head(engine, url)
    return engine

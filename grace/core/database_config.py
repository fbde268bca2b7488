"""grace.yaml's `database` section: one URL for the Grace store and the Dagster instance, its password by reference.

The password never enters a URL, a rendered file or a resource's config (the Dagster UI shows those):
load_manifest hands it to libpq in the process environment (PGPASSWORD), which every process that
opens the store or the instance inherits, `grace dev`'s children included.
"""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from grace.core.secrets import SecretError, SecretRef, check_key_file, parse_secret_ref, read_private_file

DATABASE_URL_ENV = "GRACE_DATABASE_URL"  # overrides database.url (and store:) when set
PASSWORD_ENV = "PGPASSWORD"  # libpq's own: psycopg2 uses it whenever a URL has no password
SUPPORTED_URL = re.compile(r"^(sqlite|postgresql(\+psycopg2)?)://")
# SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; Grace and dagster-postgres ship psycopg2.
PSYCOPG2_SCHEME = "postgresql+psycopg2"
MAX_PASSWORD_BYTES = 1024


def check_database_url(url: str, where: str) -> str:
    """A sqlite:/// or postgresql(+psycopg2):// URL without a password; errors name `where` it came from."""
    if not SUPPORTED_URL.match(url):
        raise ValueError(
            f"{where}: {url.split('://')[0]!r} is not a supported database; use sqlite:///path/to/grace.db "
            "or postgresql+psycopg2://user@host:5432/database"
        )
    userinfo = url.split("://", 1)[1].split("@", 1)[0] if "@" in url else ""
    if ":" in userinfo:
        raise ValueError(
            f"{where} must not hold a password (the part after user:); "
            "set database.password to env:NAME or file:PATH instead"
        )
    return url


def with_psycopg2(url: str) -> str:
    """url, with a bare postgresql:// pinned to the psycopg2 driver."""
    if url.startswith("postgresql://"):
        return PSYCOPG2_SCHEME + url.removeprefix("postgresql")
    return url


class DatabaseConfig(BaseModel):
    """Where Grace keeps everything: the store and, for PostgreSQL, the Dagster instance too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        description="sqlite:///path or postgresql+psycopg2://user@host:5432/db (no password); "
        f"the environment variable {DATABASE_URL_ENV} overrides it",
    )
    password: str | None = Field(
        default=None,
        description="where the PostgreSQL password lives: env:NAME or file:PATH (mode 0600); "
        "leave out for trust or .pgpass authentication",
    )

    @field_validator("url")
    @classmethod
    def _supported(cls, url: str) -> str:
        return check_database_url(url, "database.url")

    @field_validator("password")
    @classmethod
    def _reference(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        ref = parse_secret_ref(value, _base_dir(info))
        if ref.kind == "file" and os.path.lexists(ref.path):
            check_key_file(ref, "password file")
        return str(ref)

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")


def override_from_environment(data: object) -> object:
    """Raw manifest data with GRACE_DATABASE_URL, when set, as database.url in place of store: and database.url."""
    url = os.environ.get(DATABASE_URL_ENV)
    if not url or not isinstance(data, dict):
        return data
    check_database_url(url, f"environment variable {DATABASE_URL_ENV}")
    database = data.get("database")
    kept = {key: value for key, value in database.items() if key != "url"} if isinstance(database, dict) else {}
    return {**{key: value for key, value in data.items() if key != "store"}, "database": {**kept, "url": url}}


def export_password(database: DatabaseConfig | None) -> None:
    """Put the resolved password where libpq looks (PGPASSWORD), for this process and its children."""
    if database is not None and database.is_postgres and database.password is not None:
        os.environ[PASSWORD_ENV] = resolve_password(database.password)


def resolve_password(reference: str) -> str:
    """The password that reference (env:NAME or file:PATH) points to; errors say where, never what."""
    ref = parse_secret_ref(reference)
    if ref.kind == "env":
        value = os.environ.get(ref.name)
        if value is None:
            raise SecretError(f"database.password: {_describe(ref)} is not set")
    else:
        value = _read_password_file(ref)
    if not value:
        raise SecretError(f"database.password: {_describe(ref)} is empty")
    return value


def _read_password_file(ref: SecretRef) -> str:
    try:
        content = read_private_file(ref, MAX_PASSWORD_BYTES, "password file")
    except SecretError as error:
        raise SecretError(f"database.password: {error}") from None
    if len(content) > MAX_PASSWORD_BYTES:
        raise SecretError(f"database.password: {_describe(ref)} is over {MAX_PASSWORD_BYTES} bytes, not a password")
    try:
        return content.decode("utf-8").rstrip("\r\n")  # editors end files with a newline
    except UnicodeDecodeError:
        raise SecretError(f"database.password: {_describe(ref)} is not UTF-8 text") from None


def _describe(ref: SecretRef) -> str:
    return ref.describe("password file")


def _base_dir(info: ValidationInfo) -> str:
    return (info.context or {}).get("base_dir", ".")

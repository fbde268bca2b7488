"""The versioned schema of the Grace store: open at head, upgrade old stores, refuse newer ones.

Revisions live in versions/ and run through Alembic with their own version table, so a
Dagster instance sharing the database keeps its alembic_version to itself.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, Engine, inspect, make_url, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from grace.resources.db.schema import writer_of

VERSION_TABLE = "grace_alembic_version"
INITIAL = "0001"  # the schema release 0.1.0 made with create_all, before it had a version table
HEAD = "0008"  # the newest revision in versions/ (tests/dagster/test_migrations.py keeps the two in step)
_ADVISORY_LOCK_KEY = 0x67726163  # "grac": serializes Grace processes migrating one PostgreSQL database


class StoreTooNew(RuntimeError):
    """The store was migrated by a newer Grace than this one."""


def masked_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def ensure_head(engine: Engine, url: str) -> None:
    """Bring the store to HEAD; one small query when it is there already."""
    with engine.connect() as connection:
        if _recorded_revision(connection) == HEAD:
            return
    upgrade(engine, url)


def upgrade(engine: Engine, url: str) -> tuple[str | None, str]:
    """Migrate the store to HEAD under a lock that other starters wait on; return (from, to).

    An empty database is created at HEAD; a 0.1.0 store (tables, no version table) is
    stamped INITIAL first; a revision this Grace does not know raises StoreTooNew.
    """
    from alembic import command

    with _migration_lock(engine, url) as connection:
        before = current_revision_on(connection)
        config = _alembic_config(connection)
        if before is not None and before not in _known_revisions(config):
            raise StoreTooNew(
                f"the Grace store at {masked_url(url)} is at schema revision {before}, but the newest this "
                f"Grace knows is {HEAD}: upgrade Grace to use this store, or point `store:` in grace.yaml "
                "at another database"
            )
        if before != HEAD:
            if before == INITIAL and not inspect(connection).has_table(VERSION_TABLE):
                command.stamp(config, INITIAL)
            command.upgrade(config, "head")
    return before, HEAD


def current_revision(engine: Engine) -> str | None:
    """The store's schema revision: INITIAL for an unversioned 0.1.0 store, None if empty."""
    with engine.connect() as connection:
        return current_revision_on(connection)


def current_revision_on(connection: Connection) -> str | None:
    inspector = inspect(connection)
    if inspector.has_table(VERSION_TABLE):
        return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return INITIAL if inspector.has_table("documents") else None


def _recorded_revision(connection: Connection) -> str | None:
    try:
        return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    except (OperationalError, ProgrammingError):
        connection.rollback()  # PostgreSQL refuses further statements in a failed transaction
        return None


def _alembic_config(connection: Connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


def _known_revisions(config) -> set[str]:
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}


@contextlib.contextmanager
def _migration_lock(engine: Engine, url: str) -> Iterator[Connection]:
    """A write transaction that holds the store's migration lock until it commits."""
    database = make_url(url).database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        with open(f"{database}.migrate.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
            with writer_of(engine).begin() as connection:
                yield connection
        return
    with writer_of(engine).begin() as connection:
        if engine.dialect.name == "postgresql":
            # Transaction-scoped, so a crashed starter can never leave it held.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        yield connection

"""The PostgreSQL server the tests use: the machine's own, or a throwaway one; a fresh database per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


PROBE_TIMEOUT_SECONDS = 2


def configured_postgres_url() -> str:
    return os.environ.get("GRACE_TEST_POSTGRES", DEFAULT_POSTGRES_URL)


def postgres_answers(url: str) -> bool:
    """Whether a PostgreSQL server accepts a connection at url within PROBE_TIMEOUT_SECONDS."""
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": PROBE_TIMEOUT_SECONDS})
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        return True
    except sqlalchemy.exc.OperationalError:
        return False
    finally:
        engine.dispose()


@contextmanager
def postgres_server(url: str) -> Iterator[str]:
    """An admin URL of a live PostgreSQL server: url itself if it answers, else a throwaway server.

    The throwaway server comes from the pgserver wheel (PostgreSQL binaries, no system install),
    listens on a Unix socket in a fresh temporary folder, and is stopped and deleted on exit.
    As root, pgserver runs initdb and postgres as a `pgserver` system user it creates, since
    initdb refuses to run as root.
    """
    if postgres_answers(url):
        yield url
        return
    pgdata = Path(tempfile.mkdtemp(prefix="grace-test-postgres-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset under CI
        import pgserver

        server = pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield make_url(server.get_uri()).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the server at admin_url, dropped on exit."""
    name = f"grace_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

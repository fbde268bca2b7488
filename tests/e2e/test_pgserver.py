"""Without a PostgreSQL server at GRACE_TEST_POSTGRES, the tests start a throwaway one from pgserver."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from grace.resources.store.store import Store
from tests.helpers.devserver import free_port
from tests.helpers.postgres import configured_postgres_url, fresh_postgres_database, postgres_answers, postgres_server


def test_a_throwaway_server_stands_in_when_nothing_listens(monkeypatch):
    silent = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/test"
    monkeypatch.setenv("GRACE_TEST_POSTGRES", silent)
    assert configured_postgres_url() == silent and not postgres_answers(silent)
    with postgres_server(configured_postgres_url()) as url:
        assert url != silent
        socket_dir = Path(make_url(url).query["host"])
        assert socket_dir.is_dir()
        engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT 6 * 7").scalar() == 42
        engine.dispose()
        with fresh_postgres_database(url) as database_url:
            store = Store(database_url)
            assert store.engine.dialect.name == "postgresql" and store.ledger.documents_of("docs") == {}
            store.dispose()
    assert not socket_dir.exists(), "the throwaway server's folder is deleted"
    assert not postgres_answers(url), "the throwaway server is stopped"


def test_a_live_server_is_used_as_it_is(postgres_admin_url):
    with postgres_server(postgres_admin_url) as url:
        assert url == postgres_admin_url

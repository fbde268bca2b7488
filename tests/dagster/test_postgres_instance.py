"""grace.yaml's database: one URL puts store and Dagster instance on PostgreSQL, its password by reference."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import sqlalchemy
import yaml
from dagster import DagsterInstance
from dagster._core.test_utils import create_run_for_test
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from sqlalchemy.pool import NullPool

from grace.cli.main import main
from grace.core.database_config import DATABASE_URL_ENV, PASSWORD_ENV
from grace.core.manifest import ManifestError, load_manifest
from grace.core.secrets import SecretError
from grace.deploy.instance import render_instance
from grace.resources.db.schema import make_engine

SECRET = "pa55-w0rd:with@odd/chars"
PASSWORD_VAR = "GRACE_TEST_DB_PASSWORD"


@pytest.fixture(autouse=True)
def _own_environment(monkeypatch):
    """load_manifest sets PGPASSWORD: monkeypatch restores it after each test, as it does the override."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    monkeypatch.setenv(PASSWORD_VAR, SECRET)


def database_manifest(url: str, password: str | None = f"env:{PASSWORD_VAR}") -> str:
    lines = f"state_dir: state\ndatabase:\n  url: {url}\n"
    return lines + (f"  password: {password}\n" if password else "")


def test_rendering_puts_runs_event_logs_and_schedules_on_postgresql_without_the_password(write_manifest, tmp_path):
    manifest = load_manifest(write_manifest(database_manifest("postgresql://grace@db.example:6543/grace")))
    home = tmp_path / "home"
    render_instance(manifest, home, tmp_path)
    text = (home / "dagster.yaml").read_text()
    assert SECRET not in text and "password:" not in text.split("\n", 2)[2]
    assert f"env:{PASSWORD_VAR}" in text  # the header says where the password comes from
    config = yaml.safe_load(text)
    assert config["storage"] == {
        "postgres": {
            "postgres_db": {
                "username": "grace",
                "hostname": "db.example",
                "db_name": "grace",
                "port": 6543,
                "scheme": "postgresql+psycopg2",
            }
        }
    }
    assert not {"run_storage", "event_log_storage", "schedule_storage"} & set(config)
    # The store: the same database, pinned to psycopg2, with no password in its URL (resources show it in the UI).
    assert manifest.store_url == "postgresql+psycopg2://grace@db.example:6543/grace"
    assert os.environ[PASSWORD_ENV] == SECRET


def test_sqlite_and_the_older_store_key_keep_the_instance_in_the_dagster_home(write_manifest, tmp_path):
    for text in (database_manifest(f"sqlite:///{tmp_path}/grace.db", None), "store: postgresql+psycopg2://u@h/d\n"):
        manifest = load_manifest(write_manifest(text))
        render_instance(manifest, tmp_path / "home", tmp_path)
        assert "storage" not in yaml.safe_load((tmp_path / "home" / "dagster.yaml").read_text())
    assert PASSWORD_ENV not in os.environ


def test_the_rendered_instance_runs_on_a_fresh_postgresql_database(write_manifest, tmp_path, postgres_url):
    manifest = load_manifest(write_manifest(database_manifest(postgres_url)))
    home = tmp_path / "home"
    render_instance(manifest, home, tmp_path)
    started = time.monotonic()
    instance = DagsterInstance.from_config(str(home))
    schema_seconds = time.monotonic() - started
    try:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        run = create_run_for_test(instance, job_name="ingest", tags={"grace/origin": "ingest"})
    finally:
        instance.dispose()
    reopened = DagsterInstance.from_config(str(home))
    try:
        assert [found.run_id for found in reopened.get_runs()] == [run.run_id]
    finally:
        reopened.dispose()
    engine = sqlalchemy.create_engine(postgres_url, poolclass=NullPool)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT run_id FROM runs").scalars().all() == [run.run_id]
    engine.dispose()
    assert not (home / "history").exists() and not (home / "schedules").exists(), "nothing on SQLite in the home"
    print(f"dagster-postgres schema on a fresh database: {schema_seconds:.2f}s")


def test_the_password_reaches_libpq_for_the_store(write_manifest, postgres_url):
    """The server trusts 127.0.0.1, so the proof is what libpq connected with: PQpass, through psycopg2."""
    manifest = load_manifest(write_manifest(database_manifest(postgres_url)))
    engine = make_engine(manifest.store_url)
    try:
        connection = engine.raw_connection()
        assert connection.driver_connection.info.password == SECRET
        connection.close()
    finally:
        engine.dispose()


def test_the_environment_overrides_database_url_and_store(write_manifest, monkeypatch):
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+psycopg2://ops@10.0.0.5/grace")
    manifest = load_manifest(write_manifest(database_manifest("postgresql+psycopg2://dev@localhost/dev")))
    assert manifest.store_url == "postgresql+psycopg2://ops@10.0.0.5/grace"
    assert manifest.database.password == f"env:{PASSWORD_VAR}", "the password reference stays"
    older = load_manifest(write_manifest("store: sqlite:///x.db\n"))
    assert older.store is None and older.store_url == "postgresql+psycopg2://ops@10.0.0.5/grace"
    monkeypatch.setenv(DATABASE_URL_ENV, "mysql://ops@10.0.0.5/grace")
    with pytest.raises(ManifestError, match=DATABASE_URL_ENV):
        load_manifest(write_manifest("state_dir: state\n"))
    monkeypatch.setenv(DATABASE_URL_ENV, f"postgresql://ops:{SECRET}@10.0.0.5/grace")
    with pytest.raises(ManifestError, match=f"{DATABASE_URL_ENV} must not hold a password") as refused:
        load_manifest(write_manifest("state_dir: state\n"))
    assert SECRET not in str(refused.value)


def test_store_and_database_together_or_a_password_in_the_url_are_refused(write_manifest):
    both = database_manifest("postgresql+psycopg2://u@h/d") + "store: sqlite:///x.db\n"
    with pytest.raises(ManifestError, match=r"store: and database: are both set"):
        load_manifest(write_manifest(both))
    with pytest.raises(ManifestError, match=r"database\.url must not hold a password") as refused:
        load_manifest(write_manifest(database_manifest(f"postgresql+psycopg2://u:{SECRET}@h/d")))
    assert SECRET not in str(refused.value)
    with pytest.raises(ManifestError, match="must not hold a secret value"):
        load_manifest(write_manifest(database_manifest("postgresql+psycopg2://u@h/d", SECRET)))


def test_password_reference_errors_name_the_reference_and_never_the_value(
    write_manifest, tmp_path, monkeypatch, capsys
):
    url = "postgresql+psycopg2://u@h/d"
    monkeypatch.delenv(PASSWORD_VAR)
    path = write_manifest(database_manifest(url))
    with pytest.raises(SecretError, match=f"environment variable {PASSWORD_VAR} \\(env:{PASSWORD_VAR}\\) is not set"):
        load_manifest(path)
    assert main(["validate", str(path)]) == 2
    assert f"env:{PASSWORD_VAR}" in capsys.readouterr().err

    secret_file = tmp_path / "db.password"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o644)
    with pytest.raises(ManifestError, match=r"password file .*db\.password .* has mode 0644.*chmod 600") as loose:
        load_manifest(write_manifest(database_manifest(url, "file:db.password")))
    assert SECRET not in str(loose.value)
    secret_file.chmod(0o600)
    load_manifest(write_manifest(database_manifest(url, "file:db.password")))
    assert os.environ[PASSWORD_ENV] == SECRET, "the file's text, without its final newline"

    (tmp_path / "link.password").symlink_to(secret_file)
    with pytest.raises(ManifestError, match=r"link\.password .* is a symlink"):
        load_manifest(write_manifest(database_manifest(url, "file:link.password")))
    with pytest.raises(SecretError, match=r"no password file .*missing\.password .*does not exist"):
        load_manifest(write_manifest(database_manifest(url, "file:missing.password")))
    (tmp_path / "empty.password").write_text("")
    (tmp_path / "empty.password").chmod(0o600)
    with pytest.raises(SecretError, match=r"empty\.password .* is empty"):
        load_manifest(write_manifest(database_manifest(url, "file:empty.password")))
    big = Path(tmp_path / "big.password")
    big.write_text("x" * 5000)
    big.chmod(0o600)
    with pytest.raises(SecretError, match=r"big\.password .* is over 1024 bytes"):
        load_manifest(write_manifest(database_manifest(url, "file:big.password")))

"""The store's schema is versioned: a 0.1.0 store upgrades and stays searchable, newer ones are refused."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, insert, make_url, select, text

import grace.resources.db.migrations as migrations
from grace.cli.main import main
from grace.resources.db.chunk_rows import NewChunk
from grace.resources.db.key_tables import token_version
from grace.resources.db.migrations import HEAD, INITIAL, VERSION_TABLE, StoreTooNew, current_revision
from grace.resources.db.schema import changes, chunks, documents, embeddings, metadata
from grace.resources.store.store import Store
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment
from tests.helpers.store_writes import replace_chunks

DATA = Path(__file__).resolve().parents[1] / "data"
OLD_CHUNK_COUNTER = 10  # as if chunks 4..10 had been deleted: their ids may still sit in a built index


def create_release_0_1_0_store(url: str) -> None:
    """The 0.1.0 DDL and sample rows, as that release left them (no version table)."""
    engine = create_engine(url)
    dialect = engine.dialect.name
    ddl = (DATA / f"store_v0_1_0_{dialect}.sql").read_text()
    without_comments = "\n".join(line for line in ddl.splitlines() if not line.startswith("--"))
    statements = [statement for statement in without_comments.split(";") if statement.strip()]
    rows = json.loads((DATA / "store_v0_1_0_rows.json").read_text())
    with engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
        for table in (documents, chunks, embeddings, changes):
            connection.execute(insert(table), [_decoded(table.name, row) for row in rows[table.name]])
        if dialect == "sqlite":
            connection.exec_driver_sql(f"UPDATE sqlite_sequence SET seq = {OLD_CHUNK_COUNTER} WHERE name = 'chunks'")
        else:
            connection.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('chunks', 'id'), {OLD_CHUNK_COUNTER})")
            connection.exec_driver_sql("SELECT setval(pg_get_serial_sequence('changes', 'id'), 4)")
    engine.dispose()


def _decoded(table: str, row: dict) -> dict:
    row = dict(row)
    for column in ("updated_at", "recorded_at", "created_at"):
        if column in row:
            row[column] = datetime.fromisoformat(row[column])
    if table == "embeddings":
        row["vector"] = bytes.fromhex(row["vector"])
    return row


@pytest.fixture
def old_store_url(store_url):
    create_release_0_1_0_store(store_url)
    return store_url


def schema_differences(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        differences = compare_metadata(context, metadata)
    engine.dispose()
    return differences


def test_head_names_the_newest_revision_script():
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD


def test_a_fresh_store_is_created_at_head_and_matches_schema_py(store_url):
    store = Store(store_url)
    assert current_revision(store.engine) == HEAD
    store.dispose()
    assert schema_differences(store_url) == []


def test_starters_opening_one_store_at_once_wait_for_one_migration(old_store_url):
    starters = 4
    barrier = threading.Barrier(starters)
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            barrier.wait(timeout=30)
            Store(old_store_url).dispose()
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert schema_differences(old_store_url) == []


def test_a_release_0_1_0_store_upgrades_and_every_active_document_is_still_found(tmp_path, old_store_url):
    store = Store(old_store_url)
    assert current_revision(store.engine) == HEAD
    store.dispose()
    assert schema_differences(old_store_url) == []
    sample = json.loads((DATA / "store_v0_1_0_rows.json").read_text())
    active = [row for row in sample["documents"] if row["status"] == "active"]
    deployment = Deployment(tmp_path, old_store_url, HashingEmbedderResource(dimension=64))
    with deployment.store.engine.connect() as connection:  # its plaintext was sealed when the store opened
        stored = connection.execute(select(documents.c.text).where(documents.c.text.is_not(None))).scalars().all()
        stored += connection.execute(select(chunks.c.text)).scalars().all()
    assert len(stored) > len(active) and all(token_version(value) == 1 for value in stored)
    for shard in range(2):
        assert deployment.rebuild(shard).success
    assert deployment.stats()["total"]["index_coverage"] == 1.0
    for row in active:
        query = " ".join(row["text"].split()[:8])
        assert [hit.path for hit in deployment.search(query, k=1)] == [row["path"]]
    # The upgrade kept the id counter: no new chunk takes an id a built index may still name.
    alpha = next(row for row in active if row["path"] == "alpha.txt")
    replace_chunks(deployment.store, alpha["id"], alpha["processed_hash"], [NewChunk(0, "h-new", "new", 1)], "s")
    with deployment.store.engine.connect() as connection:
        assert connection.execute(select(func.max(chunks.c.id))).scalar_one() > OLD_CHUNK_COUNTER


def test_a_store_from_a_newer_grace_is_refused(store_url):
    if store_url.startswith("postgresql"):  # trust auth ignores the password; the message must hide it
        store_url = make_url(store_url).set(password="s3cret").render_as_string(hide_password=False)
    Store(store_url).dispose()
    engine = create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(StoreTooNew) as refused:
        Store(store_url)
    message = str(refused.value)
    assert "revision 0099" in message and f"newest this Grace knows is {HEAD}" in message
    assert "upgrade Grace" in message and make_url(store_url).render_as_string(hide_password=True) in message
    assert "s3cret" not in message


def test_grace_store_upgrade_migrates_by_hand_and_a_second_run_changes_nothing(tmp_path, old_store_url, capsys):
    manifest = tmp_path / "grace.yaml"
    manifest.write_text(f"state_dir: state\nstore: {old_store_url}\n")
    assert main(["store", "version", "-c", str(manifest)]) == 0
    assert f"revision {INITIAL};" in capsys.readouterr().out
    assert main(["store", "upgrade", "-c", str(manifest)]) == 0
    assert f"upgraded from revision {INITIAL} to {HEAD}" in capsys.readouterr().out
    assert main(["store", "upgrade", "-c", str(manifest)]) == 0
    assert f"already at revision {HEAD}" in capsys.readouterr().out
    assert main(["store", "version", "-c", str(manifest)]) == 0
    assert f"revision {HEAD};" in capsys.readouterr().out
    assert schema_differences(old_store_url) == []

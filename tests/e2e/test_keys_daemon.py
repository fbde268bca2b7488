"""Keys under a real `grace dev`: the first start creates the 0600 key file and says where it is, and
rotate_keys_schedule fires on keys.cron and rotates a key that is due."""

from __future__ import annotations

import os
import stat

from dagster import DagsterInstance
from sqlalchemy import select

from grace import api
from grace.core.manifest import load_manifest
from grace.resources.db.key_tables import AuditEntry, KeyEvent, key_audit
from grace.resources.store.store import Store
from tests.helpers.daemon import grace, wait_for
from tests.helpers.devserver import DevServer, free_port

MANIFEST = (
    "state_dir: state\n{storage}"
    "sources:\n  - {{name: docs, path: inbox, patterns: ['**/*.md']}}\n"
    "keys: {{cron: '* * * * *', rotate_every: 1s}}\n"
)


def test_grace_dev_creates_the_key_file_and_the_schedule_rotates_under_it(tmp_path, storage):
    """Twice: schedules, runs and the key tables on SQLite, then all on PostgreSQL."""
    manifest = tmp_path / "grace.yaml"
    manifest.write_text(MANIFEST.format(storage=storage))
    key_file, home, log = tmp_path / "state" / "master.key", tmp_path / "dagster_home", tmp_path / "dev.log"
    with DevServer(manifest, home, free_port(), log):
        assert stat.S_IMODE(os.lstat(key_file).st_mode) == 0o600 and stat.S_ISREG(os.lstat(key_file).st_mode)
        printed = log.read_text()
        assert f"created the key-encryption key {key_file} (mode 0600)" in printed and "Back it up" in printed

        # Version 1 (made here, or already by the code server's store), due a second after it was made;
        # rewrap never rotates, so every rotation below is the schedule's.
        first = grace("keys", "rewrap", "-c", str(manifest), cwd=tmp_path)
        assert first.returncode == 0 and "to version 1 " in first.stdout, first.stdout + first.stderr
        wait_for(lambda: _rotated(manifest), timeout=150, every=3)

        store = Store(load_manifest(manifest).store_url)
        try:
            with store.engine.connect() as connection:
                entries = [AuditEntry.from_row(row) for row in connection.execute(select(key_audit))]
        finally:
            store.dispose()
        rotations = [entry for entry in entries if entry.event == KeyEvent.ROTATED]
        assert rotations
        instance = DagsterInstance.from_config(str(home))
        try:
            assert ("Postgres" in type(instance.schedule_storage).__name__) == bool(storage)
            for rotation in rotations:
                run = instance.get_run_by_id(rotation.run_id)
                assert run is not None and run.job_name == "rotate_keys"
                assert run.tags["dagster/schedule_name"] == "rotate_keys_schedule"
                assert run.tags["grace/origin"] == "keys"
        finally:
            instance.dispose()


def _rotated(manifest) -> dict | None:
    status = api.key_status(manifest)
    return status if status["primary"] is not None and status["primary"] >= 2 else None

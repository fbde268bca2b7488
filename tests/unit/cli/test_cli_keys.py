"""`grace keys status|rotate|rewrap|destroy|rotate-kek`, the KEK's errors, secrets in grace.yaml and the quick
start's key file, on SQLite and PostgreSQL. No output ever holds the KEK."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from grace.cli.keys import KeyFileMissing, ensure_key_file
from grace.cli.main import main
from grace.core.manifest import load_manifest
from grace.core.secrets import create_key_file
from grace.resources.db.key_tables import KeyEvent
from grace.resources.db.schema import chunks, documents, utc_now
from grace.resources.store.store import Store
from tests.helpers.keys import DAY, TEST_KEK_VARIABLE, read_text, seed_text, vault_of

SECRET_LOOKING = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="


def keys_config(store_url: str, kek: str = f"env:{TEST_KEK_VARIABLE}", min_decryption_versions: int = 1) -> str:
    return (
        f"state_dir: state\nstore: {store_url}\nsources: []\n"
        f"keys: {{kek: '{kek}', rotate_every: 1d, rewrap_batch: 5, "
        f"min_decryption_versions: {min_decryption_versions}}}\n"
    )


@pytest.fixture
def config(tmp_path, store_url, kek) -> str:
    path = tmp_path / "grace.yaml"
    path.write_text(keys_config(store_url))
    return str(path)


@pytest.fixture
def opened(config):
    manifest = load_manifest(config)
    store = Store(manifest.store_url)
    yield manifest, store
    store.dispose()


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_rotate_rewrap_and_destroy(config, opened, kek, capsys):
    manifest, store = opened
    code, out, _ = run(capsys, "keys", "status", "-c", config)
    assert code == 0 and "no key versions yet" in out
    assert f"KEK: environment variable {TEST_KEK_VARIABLE} (env:{TEST_KEK_VARIABLE})" in out

    vault, now = vault_of(manifest, store), utc_now()
    vault.rotate(now - 3 * DAY)
    written = seed_text(vault)
    # Version 2: primary, due 36 h ago, so past the daily keys.cron tick after that and its hour of grace.
    vault.rotate(now - 2.5 * DAY, force=True)  # rows still under 1
    code, out, _ = run(capsys, "keys", "status", "--json", "-c", config)
    status = json.loads(out)
    assert code == 0 and status["primary"] == 2 and status["primary_overdue"] is True
    assert [(v["version"], v["status"], v["rows"]) for v in status["versions"]] == [
        (1, "decrypt-only", len(written)),
        (2, "primary", 0),
    ]
    assert 2.99 < status["versions"][0]["age_days"] < 3.01
    code, out, _ = run(capsys, "keys", "status", "-c", config)
    assert "decrypt-only" in out and "OVERDUE" in out and str(len(written)) in out

    for version, reason in [(1, "rows still use it"), (2, "it is primary"), (9, "the store has no such version")]:
        code, _, err = run(capsys, "keys", "destroy", str(version), "-c", config)
        assert code == 2 and f"key version {version} was not destroyed: {reason}" in err
    code, out, _ = run(capsys, "keys", "rewrap", "-c", config)
    assert code == 0 and f"rewrapped {len(written)} row(s) to version 2" in out
    code, out, _ = run(capsys, "keys", "destroy", "1", "-c", config)
    assert code == 0 and "destroyed key version 1" in out

    code, out, _ = run(capsys, "keys", "rotate", "-c", config)
    assert code == 0 and "rotated: version 3 is the primary" in out and f"rewrapped {len(written)} row(s)" in out
    assert "kept version 2: key version 2 was not destroyed: it was primary until" in out
    code, out, _ = run(capsys, "keys", "rotate", "-c", config)
    assert "not due: version 3 stays primary until" in out and "rewrapped 0 row(s)" in out
    code, out, _ = run(capsys, "keys", "rotate", "--force", "-c", config)
    assert "rotated: version 4 is the primary" in out
    assert read_text(vault) == (written, {4})
    every_output = capsys.readouterr()
    assert kek not in every_output.out + every_output.err


def test_rotate_kek_rewraps_the_data_keys_and_leaves_the_rows(config, opened, tmp_path, capsys, monkeypatch):
    manifest, store = opened
    vault = vault_of(manifest, store)
    vault.ensure_primary()
    written = seed_text(vault, documents_count=2)
    rows_before = raw_text(store)
    new_key = create_key_file(tmp_path / "keys" / "new.key")
    monkeypatch.chdir(tmp_path)  # --new-kek paths are relative to where the command runs

    code, out, _ = run(capsys, "keys", "rotate-kek", "--new-kek", "file:keys/new.key", "-c", config)
    assert code == 0 and "rewrapped 1 data key(s)" in out and f"kek: file:{new_key}" in out
    assert raw_text(store) == rows_before, "rows are not touched"
    code, _, err = run(capsys, "keys", "status", "-c", config)
    assert code == 2 and f"environment variable {TEST_KEK_VARIABLE}" in err and "did not wrap" in err

    (tmp_path / "grace.yaml").write_text(keys_config(manifest.store_url, kek=f"file:{new_key}"))
    code, out, _ = run(capsys, "keys", "status", "-c", config)
    assert code == 0 and f"KEK: key file {new_key}" in out
    renewed = vault_of(load_manifest(config), store)
    assert read_text(renewed) == (written, {1})
    assert [entry.event for entry in renewed.audit_entries()][-1] == KeyEvent.KEK_ROTATED

    for reference, problem in [
        ("file:keys/new.key", "is the KEK in use already"),
        ("env:GRACE_NO_SUCH_VARIABLE", "environment variable GRACE_NO_SUCH_VARIABLE (env:GRACE_NO_SUCH_VARIABLE)"),
        ("file:keys/absent.key", "the file does not exist"),
        (SECRET_LOOKING, "use env:NAME"),
    ]:
        code, out, err = run(capsys, "keys", "rotate-kek", "--new-kek", reference, "-c", config)
        assert code == 2 and problem in err, err
        assert SECRET_LOOKING not in out + err


def test_a_rotation_killed_mid_rewrap_leaves_every_row_readable_and_the_next_run_finishes(config, opened, tmp_path):
    manifest, store = opened
    vault = vault_of(manifest, store)
    vault.rotate(utc_now() - timedelta(hours=1))
    written = seed_text(vault)  # 4 documents and 20 chunks, rewrapped 5 rows a transaction
    killed = subprocess.run(
        [grace_command(), "keys", "rotate", "--force", "-c", config],
        capture_output=True,
        text=True,
        env={**os.environ, "GRACE_FAILPOINT": "rewrap.after_batch"},
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert read_text(vault) == (written, {1, 2}), "halfway: some rows moved, every row decrypts"

    rerun = subprocess.run(
        [grace_command(), "keys", "rotate", "-c", config], capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "not due: version 2 stays primary" in rerun.stdout, "the killed run's rotation stands"
    assert f"rewrapped {len(written) - 4} row(s) to version 2" in rerun.stdout
    assert read_text(vault) == (written, {2})


def grace_command() -> str:
    return str(Path(sys.executable).with_name("grace"))


def raw_text(store: Store) -> list:
    with store.engine.connect() as connection:
        return [*connection.execute(select(documents.c.text)), *connection.execute(select(chunks.c.text))]


def test_a_missing_or_wrong_kek_exits_2_naming_where_it_was_looked_for(config, opened, kek, capsys, monkeypatch):
    manifest, store = opened
    vault_of(manifest, store).ensure_primary()
    monkeypatch.delenv(TEST_KEK_VARIABLE)
    for command in (["keys", "status"], ["keys", "rotate"], ["keys", "rewrap"], ["stats"]):
        code, _, err = run(capsys, *command, "-c", config)
        assert code == 2 and f"environment variable {TEST_KEK_VARIABLE} (env:{TEST_KEK_VARIABLE}): it is not set" in err

    wrong = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(TEST_KEK_VARIABLE, wrong)
    for command in (["keys", "rotate", "--force"], ["stats"]):
        code, out, err = run(capsys, *command, "-c", config)
        assert code == 2 and f"the KEK from environment variable {TEST_KEK_VARIABLE}" in err and "did not wrap" in err
        assert wrong not in out + err and kek not in out + err
    monkeypatch.setenv(TEST_KEK_VARIABLE, "not-a-key!")
    code, _, err = run(capsys, "keys", "status", "-c", config)
    assert code == 2 and "does not hold base64" in err


def test_a_loose_key_file_is_refused_by_validate_and_every_key_command(tmp_path, capsys):
    key = create_key_file(tmp_path / "master.key")
    config = tmp_path / "grace.yaml"
    config.write_text(keys_config(f"sqlite:///{tmp_path / 'grace.db'}", kek="file:master.key"))
    assert run(capsys, "validate", str(config))[0] == 0
    key.chmod(0o640)
    for command in (["validate", str(config)], ["keys", "status", "-c", str(config)]):
        code, _, err = run(capsys, *command)
        assert code == 2 and f"keys.kek: key file {key}" in err and "has mode 0640" in err
        assert f"chmod 600 {key}" in err


@pytest.mark.parametrize("literal", [SECRET_LOOKING, "hunter2-correct-horse", "0" * 64])
def test_a_literal_secret_in_grace_yaml_is_refused_and_never_printed(tmp_path, capsys, literal):
    config = tmp_path / "grace.yaml"
    config.write_text(keys_config(f"sqlite:///{tmp_path / 'grace.db'}", kek=literal))
    code, out, err = run(capsys, "validate", str(config))
    assert code == 2 and "grace.yaml:4: keys.kek: grace.yaml must not hold a secret value" in err
    assert literal not in out + err


def test_the_quick_start_creates_only_the_default_key_file_and_only_for_a_new_store(tmp_path, capsys):
    config = tmp_path / "grace.yaml"
    config.write_text("state_dir: state\nsources: []\n")
    manifest = load_manifest(config)
    key_file = tmp_path / "state" / "master.key"
    message = ensure_key_file(manifest)
    assert f"created the key-encryption key {key_file} (mode 0600)" in message and "Back it up" in message
    assert stat.S_IMODE(os.lstat(key_file).st_mode) == 0o600
    assert ensure_key_file(load_manifest(config)) is None, "an existing key file is used, never replaced"

    store = Store(manifest.store_url)
    try:
        vault_of(manifest, store).ensure_primary()
    finally:
        store.dispose()
    key_file.unlink()  # lost: a new key would open nothing in this store
    with pytest.raises(KeyFileMissing, match="holds 1 data key version.*restore the key file from your backup"):
        ensure_key_file(load_manifest(config))
    assert not key_file.exists()

    config.write_text("state_dir: fresh\nsources: []\nkeys: {kek: 'file:elsewhere/grace.key'}\n")
    code, _, err = run(capsys, "dev", "-c", str(config))
    assert code == 2 and f"keys.kek in grace.yaml names key file {tmp_path / 'elsewhere' / 'grace.key'}" in err
    assert not (tmp_path / "elsewhere").exists(), "a key file named in grace.yaml is never created"


def test_the_kek_source_is_described_but_never_its_value(config, opened, kek, capsys):
    manifest, store = opened
    vault_of(manifest, store).rotate(utc_now() - timedelta(hours=1))
    code, out, _ = run(capsys, "keys", "status", "--json", "-c", config)
    assert code == 0 and json.loads(out)["kek"] == f"environment variable {TEST_KEK_VARIABLE} (env:{TEST_KEK_VARIABLE})"
    assert kek not in out and base64.b64decode(kek).hex() not in out

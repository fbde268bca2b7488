"""The key vault on SQLite and PostgreSQL: rotation never makes a row unreadable, and nothing is destroyed in use."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from dagster import asset, materialize
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import DatabaseError

from grace.core.secrets import SecretError, create_key_file, resolve_secret
from grace.resources.db.key_tables import (
    KeyEvent,
    KeyStatus,
    kek_id,
    key_audit,
    key_versions,
    row_binding,
    token_version,
)
from grace.resources.keys.vault import (
    RETIRED_GRACE,
    DecryptionError,
    DestroyRefused,
    KeyVault,
    WrongKek,
)
from grace.resources.wiring.dagster_resources import EmbedderResource, KeyVaultResource
from tests.helpers.keys import RUN_ID, notes, open_vault

ROOT = Path(__file__).resolve().parents[4]
LATER = timedelta(hours=1)  # past RETIRED_GRACE


def write_notes(vault: KeyVault, count: int, doc: str = "d") -> dict[tuple, str]:
    written = {(doc, ordinal): f"note {ordinal} of {doc}: confidential words" for ordinal in range(count)}
    rows = [
        {"doc": key[0], "ordinal": key[1], "body": vault.encrypt(plain, row_binding(notes.c.body, key))}
        for key, plain in written.items()
    ]
    with vault.writer.begin() as connection:
        connection.execute(insert(notes), rows)
    return written


def stored_rows(vault: KeyVault) -> dict[tuple, str]:
    """Every note as stored, NULL bodies left out."""
    with vault.engine.connect() as connection:
        return {(doc, ordinal): body for doc, ordinal, body in connection.execute(select(notes)) if body is not None}


def read_notes(vault: KeyVault) -> dict[tuple, str]:
    return {key: vault.decrypt(body, row_binding(notes.c.body, key)) for key, body in stored_rows(vault).items()}


def versions_stored(vault: KeyVault) -> list[int]:
    return sorted(token_version(body) for body in stored_rows(vault).values())


def test_every_row_stays_readable_through_rotate_rewrap_and_rotate_again(store_url):
    vault = open_vault(store_url, os.urandom(32))
    written = write_notes(vault, 25)
    assert versions_stored(vault) == [1] * 25 and read_notes(vault) == written
    assert vault.rotate(force=True).version == 2
    assert read_notes(vault) == written  # old tokens still open
    written |= write_notes(vault, 5, doc="e")
    assert vault.versions_in_use() == {1: 25, 2: 5}
    assert vault.rewrap(notes.c.body, batch_size=7) == 25
    assert vault.versions_in_use() == {2: 30} and read_notes(vault) == written
    assert vault.rewrap(notes.c.body, batch_size=7) == 0  # nothing left: a rerun changes nothing
    assert vault.rotate(force=True).version == 3
    assert read_notes(vault) == written
    assert vault.rewrap(notes.c.body) == 30
    assert vault.versions_in_use() == {3: 30} and read_notes(vault) == written
    assert [(v.version, v.status) for v in vault.versions()] == [
        (1, KeyStatus.DECRYPT_ONLY),
        (2, KeyStatus.DECRYPT_ONLY),
        (3, KeyStatus.PRIMARY),
    ]


def test_rewrap_encrypts_plaintext_rows_only_when_asked(store_url):
    vault = open_vault(store_url, os.urandom(32))
    with vault.writer.begin() as connection:
        connection.execute(insert(notes), [{"doc": "p", "ordinal": 0, "body": "plain words"}])
        connection.execute(insert(notes), [{"doc": "p", "ordinal": 1, "body": "GK1:1:looks like a token"}])
        connection.execute(insert(notes), [{"doc": "p", "ordinal": 2, "body": None}])
    assert vault.rewrap(notes.c.body) == 0
    assert stored_rows(vault)[("p", 0)] == "plain words"
    assert vault.rewrap(notes.c.body, include_plaintext=True) == 2
    assert versions_stored(vault) == [1, 1]
    assert read_notes(vault) == {("p", 0): "plain words", ("p", 1): "GK1:1:looks like a token"}


@pytest.mark.parametrize(
    "tamper",
    [
        lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # ciphertext or tag bits
        lambda token: token[:12] + ("x" if token[12] != "x" else "y") + token[13:],  # nonce bits
        lambda token: "gk1:2:" + token.split(":", 2)[2],  # names another live version
        lambda token: "gk1:999999:" + token.split(":", 2)[2],  # names no version
        lambda token: token[:30],  # truncated below nonce + tag
        lambda token: token + "!",  # not base64url
        lambda token: "gk1:1:" + "A" * 41,  # a length no base64 has
    ],
)
def test_a_tampered_token_does_not_decrypt_and_is_audited(store_url, tamper):
    vault = open_vault(store_url, os.urandom(32))
    token = vault.encrypt("top secret plaintext", "notes.body:[1]")
    vault.rotate(force=True)
    before = len(vault.audit_entries())
    with pytest.raises(DecryptionError) as failed:
        vault.decrypt(tamper(token), "notes.body:[1]")
    assert "cannot decrypt" in str(failed.value)
    entries = vault.audit_entries()[before:]
    assert [entry.event for entry in entries] == [KeyEvent.DECRYPT_FAILED]
    assert entries[0].version == failed.value.version and entries[0].run_id == RUN_ID
    assert "top secret" not in str(entries[0].detail)
    assert vault.decrypt(token, "notes.body:[1]") == "top secret plaintext"


def test_a_token_copied_to_another_row_does_not_decrypt_there(store_url):
    vault = open_vault(store_url, os.urandom(32))
    write_notes(vault, 2)
    first = stored_rows(vault)[("d", 0)]
    with vault.writer.begin() as connection:
        connection.execute(update(notes).where(notes.c.ordinal == 1).values(body=first))
    with pytest.raises(DecryptionError, match="key version 1.*copied from another row"):
        vault.decrypt(first, row_binding(notes.c.body, ("d", 1)))
    assert vault.decrypt(first, row_binding(notes.c.body, ("d", 0))).startswith("note 0")
    # A rewrap meeting the copied token stops, audits it, and leaves every row as it was.
    vault.rotate(force=True)
    before = stored_rows(vault)
    with pytest.raises(DecryptionError):
        vault.rewrap(notes.c.body)
    assert stored_rows(vault) == before
    assert vault.audit_entries()[-1].event == KeyEvent.DECRYPT_FAILED
    assert vault.audit_entries()[-1].detail["column"] == "scratch_notes.body"


def test_a_missing_kek_names_where_it_was_looked_for(store_url, tmp_path, monkeypatch):
    monkeypatch.delenv("GRACE_TEST_NO_KEK", raising=False)
    for reference, where in [
        ("env:GRACE_TEST_NO_KEK", "environment variable GRACE_TEST_NO_KEK"),
        (f"file:{tmp_path / 'absent.key'}", f"key file {tmp_path / 'absent.key'}"),
    ]:
        resource = KeyVaultResource(url=store_url, kek=reference, rotate_every_seconds=3600)
        with pytest.raises(SecretError) as missing:
            resource.get()
        assert where in str(missing.value)


def test_a_wrong_kek_is_refused_at_open_and_named(store_url, tmp_path):
    right, wrong = create_key_file(tmp_path / "right.key"), create_key_file(tmp_path / "wrong.key")
    vault = open_vault(store_url, resolve_secret(f"file:{right}"))
    write_notes(vault, 3)
    with pytest.raises(WrongKek) as refused:
        KeyVaultResource(url=store_url, kek=f"file:{wrong}", rotate_every_seconds=3600).get()
    message = str(refused.value)
    assert f"key file {wrong}" in message and "use the KEK the store was created with" in message
    assert base64.urlsafe_b64encode(resolve_secret(f"file:{wrong}")).decode()[:20] not in message
    reopened = KeyVaultResource(url=store_url, kek=f"file:{right}", rotate_every_seconds=3600).get()
    assert reopened.primary().version == 1


def test_destroy_waits_until_no_row_uses_the_version_and_it_is_below_the_minimum(store_url):
    kek = os.urandom(32)
    vault = open_vault(store_url, kek, min_decryption_versions=2)
    written = write_notes(vault, 4)
    old_token = stored_rows(vault)[("d", 0)]
    vault.rotate(force=True)
    vault.rotate(force=True)  # versions 1, 2 (decrypt-only), 3 (primary)
    later = datetime.now(UTC) + LATER
    refusals = {
        1: "rows still use it (4 in scratch_notes.body); rewrap them first",
        2: "the newest 2 versions (min_decryption_versions) stay decryptable; only versions below 2",
        3: "it is primary",
        7: "no such version",
    }
    for version, reason in refusals.items():
        with pytest.raises(DestroyRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
            vault.destroy(version, now=later)
    with pytest.raises(DestroyRefused, match="a writer may still use it"):
        vault.destroy(1, now=datetime.now(UTC) + RETIRED_GRACE / 4)
    assert read_notes(vault) == written
    vault.rewrap(notes.c.body)
    vault.destroy(1, now=later)
    with vault.engine.connect() as connection:
        row = connection.execute(select(key_versions).where(key_versions.c.version == 1)).one()
    assert row.status == KeyStatus.DESTROYED and row.wrapped_key is None  # the key itself is gone
    with pytest.raises(DecryptionError, match="key version 1: the version was destroyed"):
        open_vault(store_url, kek).decrypt(old_token, row_binding(notes.c.body, ("d", 0)))
    with pytest.raises(DestroyRefused, match="it is destroyed"):
        vault.destroy(1, now=later)
    assert read_notes(vault) == written
    vault.rotate(force=True)  # version 2 falls below the newest two, and nothing uses it
    vault.destroy(2, now=datetime.now(UTC) + LATER)
    events = [entry.event for entry in vault.audit_entries()]
    assert events.count(KeyEvent.DESTROYED) == 2 and events.count(KeyEvent.DESTROY_REFUSED) == 6


def test_kek_rotation_rewraps_every_data_key_and_leaves_rows_untouched(store_url):
    old_kek, new_kek = os.urandom(32), os.urandom(32)
    vault = open_vault(store_url, old_kek)
    written = write_notes(vault, 6)
    vault.rotate(force=True)
    written |= write_notes(vault, 6, doc="e")
    rows_before = stored_rows(vault)
    with vault.engine.connect() as connection:
        wrapped_before = dict(connection.execute(select(key_versions.c.version, key_versions.c.wrapped_key)).all())
    vault.rotate_kek(new_kek, "file:/new/master.key")
    assert stored_rows(vault) == rows_before
    with vault.engine.connect() as connection:
        after = {row.version: row for row in connection.execute(select(key_versions))}
    assert all(after[v].wrapped_key != wrapped_before[v] for v in (1, 2))
    assert {row.kek_id for row in after.values()} == {kek_id(new_kek)}
    assert read_notes(vault) == written
    assert read_notes(open_vault(store_url, new_kek)) == written  # a fresh process, no cached keys
    with pytest.raises(WrongKek, match="the KEK from the old KEK"):
        open_vault(store_url, old_kek, source="the old KEK")
    entry = vault.audit_entries()[-1]
    assert entry.event == KeyEvent.KEK_ROTATED and entry.detail["versions"] == 2


def test_every_key_event_is_audited_with_a_utc_time_and_the_run_id_and_the_trail_is_append_only(store_url):
    kek = os.urandom(32)
    vault = open_vault(store_url, kek, min_decryption_versions=1)
    write_notes(vault, 3)
    vault.rotate(force=True)
    vault.rewrap(notes.c.body, batch_size=2)
    vault.destroy(1, now=datetime.now(UTC) + LATER)
    vault.rotate_kek(os.urandom(32), "the next KEK")
    with pytest.raises(DecryptionError):
        vault.decrypt(stored_rows(vault)[("d", 0)], "another row")
    entries = vault.audit_entries()
    assert [entry.event for entry in entries] == [
        KeyEvent.VERSION_CREATED,
        KeyEvent.VERSION_CREATED,
        KeyEvent.ROTATED,
        KeyEvent.REWRAP_PROGRESS,
        KeyEvent.REWRAP_PROGRESS,
        KeyEvent.DESTROYED,
        KeyEvent.KEK_ROTATED,
        KeyEvent.DECRYPT_FAILED,
    ]
    start = datetime.now(UTC) - timedelta(minutes=5)
    for entry in entries:
        assert entry.at.utcoffset() == timedelta(0) and start < entry.at <= datetime.now(UTC)
        assert entry.run_id == RUN_ID
    assert [entry.detail.get("rows") for entry in entries[3:5]] == [2, 1]
    with vault.engine.connect() as connection:
        trail = " ".join(str(tuple(row)) for row in connection.execute(select(key_audit)))
    assert "confidential" not in trail and base64.b64encode(kek).decode()[:16] not in trail
    for statement in ("UPDATE key_audit SET event = 'nothing'", "DELETE FROM key_audit"):
        with pytest.raises(DatabaseError, match="append-only"), vault.writer.begin() as connection:
            connection.execute(text(statement))
    assert len(vault.audit_entries()) == len(entries)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_seed_naive_datetime_case_rotation_happens_when_due_and_not_before(store_url):
    vault = open_vault(store_url, os.urandom(32))
    vault.ensure_primary()
    with vault.writer.begin() as connection:  # exactly what SQLite holds, and hands back, for a due time
        connection.execute(text("UPDATE key_versions SET rotate_after = '2030-01-01 00:00:00.000000'"))
    with vault.engine.connect() as connection:
        raw = connection.execute(select(key_versions.c.rotate_after)).scalar_one()
    assert raw == datetime(2030, 1, 1) and raw.tzinfo is None  # the seed compared this with an aware now
    assert vault.primary().rotate_after == datetime(2030, 1, 1, tzinfo=UTC)
    assert vault.rotate(now=datetime(2029, 12, 31, 23, 59, tzinfo=UTC)) is None
    assert vault.rotate(now=datetime(2030, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))) is None  # 23:30 UTC
    rotated = vault.rotate(now=datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert rotated is not None and rotated.version == 2
    assert rotated.rotate_after == datetime(2030, 1, 2, 0, 0, 1, tzinfo=UTC)
    assert vault.rotate(now=datetime(2030, 1, 1, 12, tzinfo=UTC)) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        vault.rotate(now=datetime(2031, 1, 1))


def test_rotation_is_due_by_aware_utc_times_on_both_backends(store_url):
    vault = open_vault(store_url, os.urandom(32))
    first = vault.ensure_primary()
    assert first.rotate_after.tzinfo is not None
    assert vault.rotate(now=first.rotate_after - timedelta(seconds=1)) is None
    assert vault.rotate(now=first.rotate_after).version == 2
    reloaded = vault.versions()
    assert all(v.created_at.utcoffset() == timedelta(0) for v in reloaded)


def test_two_rotations_racing_make_one_new_version(store_url):
    kek = os.urandom(32)
    vault = open_vault(store_url, kek)
    due = vault.ensure_primary().rotate_after
    racers = [vault, open_vault(store_url, kek)]
    barrier, results, errors = threading.Barrier(2), [], []

    def race(racer: KeyVault) -> None:
        try:
            barrier.wait(timeout=30)
            results.append(racer.rotate(now=due))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=race, args=(racer,)) for racer in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(result is None for result in results) == [False, True]
    assert [(v.version, v.status) for v in vault.versions()] == [(1, KeyStatus.DECRYPT_ONLY), (2, KeyStatus.PRIMARY)]


CHILD = """
import sys
from grace.core.secrets import resolve_secret
from tests.helpers.keys import notes, open_vault
vault = open_vault(sys.argv[1], resolve_secret("env:GRACE_TEST_KEK"))
print(vault.rewrap(notes.c.body, batch_size=10))
"""


def test_a_rewrap_killed_halfway_leaves_every_row_readable_and_a_rerun_finishes(store_url):
    kek = os.urandom(32)
    vault = open_vault(store_url, kek)
    written = write_notes(vault, 50)
    vault.rotate(force=True)
    environment = {**os.environ, "GRACE_TEST_KEK": base64.b64encode(kek).decode()}

    def rewrap_in_child(failpoint: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", CHILD, store_url]
        child_environment = {**environment, "GRACE_FAILPOINT": failpoint}
        return subprocess.run(command, cwd=ROOT, env=child_environment, capture_output=True, text=True, timeout=120)

    killed = rewrap_in_child("rewrap.after_batch")
    assert killed.returncode == -9, killed.stderr
    assert versions_stored(vault) == [1] * 40 + [2] * 10
    assert read_notes(vault) == written
    finished = rewrap_in_child("")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "40"
    assert versions_stored(vault) == [2] * 50 and read_notes(vault) == written
    progress = [entry.detail["rows"] for entry in vault.audit_entries() if entry.event == KeyEvent.REWRAP_PROGRESS]
    assert progress == [10] * 5


def test_the_resource_audits_with_the_dagster_run_id(store_url, tmp_path):
    key_file = create_key_file(tmp_path / "master.key")

    @asset
    def rotated_keys(key_vault: KeyVaultResource) -> int:
        return key_vault.get().rotate(force=True).version

    resource = KeyVaultResource(url=store_url, kek=f"file:{key_file}", rotate_every_seconds=3600)
    result = materialize([rotated_keys], resources={"key_vault": resource})
    assert result.success and result.output_for_node("rotated_keys") == 1
    entries = resource.get().audit_entries()
    assert [(entry.event, entry.run_id) for entry in entries] == [(KeyEvent.VERSION_CREATED, result.run_id)]
    events = result.all_events
    assert not any(base64.urlsafe_b64encode(resolve_secret(f"file:{key_file}")).decode()[:16] in str(e) for e in events)


def test_text_sealed_at_rest_embeds_exactly_like_the_original_with_the_real_model(store_url):
    vault = open_vault(store_url, os.urandom(32))
    written = write_notes(vault, 3)
    vault.rotate(force=True)
    vault.rewrap(notes.c.body)
    embedder = EmbedderResource().get()
    keys = sorted(written)
    originals = embedder.encode([written[key] for key in keys])
    decrypted = read_notes(vault)
    assert np.array_equal(embedder.encode([decrypted[key] for key in keys]), originals)
    tokens = embedder.encode([stored_rows(vault)[key] for key in keys])
    assert float(np.max(np.sum(tokens * originals, axis=1))) < 0.9  # what is stored says nothing like the text

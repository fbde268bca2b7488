"""The rotate_keys job, its schedule, the key_status asset and the routed rotate_keys task, on real Dagster,
SQLite and PostgreSQL: rotation only when due (the seed's naive-datetime case included), rewrap to the end,
destruction of unused versions only, and the overdue check failing when rotation lags."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timedelta

import pytest
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    DefaultScheduleStatus,
    build_schedule_context,
    materialize,
)
from sqlalchemy import text, update

from grace.core.manifest import load_manifest
from grace.core.names import ORIGIN_TAG, UNLISTED_ORIGIN_TAG, task_job_name
from grace.core.task_model import TaskRejected, task_run_config, task_run_tags
from grace.definitions import build_definitions
from grace.pipelines.keys import KEYS_ORIGIN, OVERDUE_CHECK, ROTATE_KEYS_JOB, build_key_assets
from grace.resources.db.key_tables import KeyEvent, KeyStatus, key_versions
from grace.resources.db.schema import utc_now
from grace.resources.keys.vault import KeyVault
from grace.resources.store.store import Store
from grace.resources.tasks.project_handlers import accept_task
from grace.resources.wiring.dagster_resources import EmbedderResource, build_resources
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment
from tests.helpers.keys import DAY, TEST_KEK_VARIABLE, read_text, seed_text, vault_of

FORCE = {"ops": {"key_versions": {"config": {"force": True}}}}


def keys_manifest(store_url: str, extra: str = "") -> str:
    return (
        f"state_dir: state\nstore: {store_url}\nsources: []\n"
        f"keys: {{kek: 'env:{TEST_KEK_VARIABLE}', rotate_every: 1d, rewrap_batch: 7, min_decryption_versions: 2}}\n"
        "routing:\n  routes: {rotate_keys: rotate_keys}\n"
        f"{extra}"
    )


@pytest.fixture
def deployment(tmp_path, store_url, kek):
    (tmp_path / "grace.yaml").write_text(keys_manifest(store_url))
    manifest = load_manifest(tmp_path / "grace.yaml")
    store = Store(manifest.store_url)
    yield manifest, store
    store.dispose()


def statuses(vault: KeyVault) -> dict[int, str]:
    return {version.version: version.status for version in vault.versions()}


def run_rotate_keys(manifest, instance, force: bool = False):
    job = build_definitions(manifest).resolve_job_def(ROTATE_KEYS_JOB)
    config = {"ops": {"key_versions": {"config": {"force": force}}}}
    result = job.execute_in_process(run_config=config, instance=instance)
    assert result.success
    [rotation] = [
        event.materialization.metadata
        for event in result.get_asset_materialization_events()
        if event.asset_key == AssetKey("key_versions")
    ]
    return result, {key: value.value for key, value in rotation.items()}


def test_rotate_keys_rotates_when_due_rewraps_everything_and_destroys_only_unused_versions(deployment):
    manifest, store = deployment
    vault, now, instance = vault_of(manifest, store), utc_now(), DagsterInstance.ephemeral()
    vault.rotate(now - 3 * DAY)  # version 1, due two days ago
    written = seed_text(vault)
    vault.rotate(now - 2 * DAY, force=True)  # version 2, due yesterday
    written |= seed_text(vault, documents_count=2)
    assert read_text(vault) == (written, {1, 2})

    result, rotation = run_rotate_keys(manifest, instance)
    assert rotation["rotated"] is True and rotation["primary"] == 3
    assert rotation["rows_rewrapped"] == len(written) and rotation["destroyed"] == "1"
    assert statuses(vault) == {1: KeyStatus.DESTROYED, 2: KeyStatus.DECRYPT_ONLY, 3: KeyStatus.PRIMARY}
    assert read_text(vault) == (written, {3}), "every row moved to the primary and still decrypts"
    assert result.dagster_run.tags[ORIGIN_TAG] == KEYS_ORIGIN
    assert result.dagster_run.tags[UNLISTED_ORIGIN_TAG] == KEYS_ORIGIN, "keys has no quota of its own here"
    events = {(entry.event, entry.version): entry.run_id for entry in vault.audit_entries()}
    assert events[(KeyEvent.ROTATED, 3)] == events[(KeyEvent.DESTROYED, 1)] == result.run_id
    assert events[(KeyEvent.REWRAP_PROGRESS, 3)] == result.run_id

    again, rotation = run_rotate_keys(manifest, instance)
    assert rotation["rotated"] is False and rotation["primary"] == 3 and rotation["rows_rewrapped"] == 0
    assert statuses(vault)[3] == KeyStatus.PRIMARY and read_text(vault) == (written, {3})


def test_a_version_retired_moments_ago_is_kept_and_the_refusal_reported(deployment):
    manifest, store = deployment
    vault, instance = vault_of(manifest, store), DagsterInstance.ephemeral()
    vault.rotate(utc_now() - timedelta(hours=1))
    written = seed_text(vault, documents_count=2)
    _, first = run_rotate_keys(manifest, instance)
    assert first["rotated"] is False, "version 1 is not due for a day"
    _, second = run_rotate_keys(manifest, instance, force=True)
    _, third = run_rotate_keys(manifest, instance, force=True)
    assert (second["primary"], third["primary"]) == (2, 3)
    assert third["destroyed"] == "none"
    assert "was primary until" in third["kept"]["1"], "a writer may still hold version 1 as its primary"
    assert statuses(vault) == {1: KeyStatus.DECRYPT_ONLY, 2: KeyStatus.DECRYPT_ONLY, 3: KeyStatus.PRIMARY}
    assert read_text(vault) == (written, {3})
    refused = [entry for entry in vault.audit_entries() if entry.event == KeyEvent.DESTROY_REFUSED]
    assert [entry.version for entry in refused] == [1]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_seeds_naive_datetime_on_sqlite_still_rotates_through_the_job(deployment, monkeypatch):
    """SQLite hands back naive datetimes even for DateTime(timezone=True): the seed compared them with aware
    ones and never rotated. Here rotate_after is written naive, in a process whose local zone is far from UTC."""
    manifest, store = deployment
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: a naive time taken as local would be off by 14 h
    time.tzset()
    try:
        vault, instance = vault_of(manifest, store), DagsterInstance.ephemeral()
        vault.ensure_primary()
        written = seed_text(vault, documents_count=1)
        naive_future = (utc_now() + timedelta(hours=2)).replace(tzinfo=None)
        set_naive_rotate_after(vault, naive_future)
        _, rotation = run_rotate_keys(manifest, instance)
        assert rotation["rotated"] is False, "two hours ahead in UTC is not due, whatever the local zone"

        naive_past = (utc_now() - timedelta(minutes=1)).replace(tzinfo=None)
        set_naive_rotate_after(vault, naive_past)
        _, rotation = run_rotate_keys(manifest, instance)
        assert rotation["rotated"] is True and rotation["primary"] == 2
        assert read_text(vault) == (written, {2})
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def set_naive_rotate_after(vault: KeyVault, naive: datetime) -> None:
    assert naive.tzinfo is None
    with vault.writer.begin() as connection:
        connection.execute(
            update(key_versions).where(key_versions.c.status == KeyStatus.PRIMARY).values(rotate_after=naive)
        )
        stored = connection.execute(text("SELECT rotate_after FROM key_versions WHERE status = 'primary'")).scalar()
    assert "+" not in stored and not stored.endswith("Z"), f"SQLite keeps no zone: {stored!r}"


def test_key_status_records_ages_and_rows_and_its_check_fails_when_the_primary_is_overdue(deployment, kek):
    manifest, store = deployment
    vault, instance = vault_of(manifest, store), DagsterInstance.ephemeral()
    vault.rotate(utc_now() - 3 * DAY)  # due two days ago: past keys.cron's next tick, plus the hour its run has
    written = seed_text(vault, documents_count=3, chunks_per_document=2)
    key_assets = build_key_assets(manifest)

    resources = {"key_vault": build_resources(manifest)["key_vault"]}
    overdue = materialize(
        key_assets, selection=AssetSelection.assets("key_status"), instance=instance, resources=resources
    )
    assert overdue.success, "a failed check is a finding, not a failed run"
    [check] = overdue.get_asset_check_evaluations()
    assert check.check_name == OVERDUE_CHECK and not check.passed
    assert check.severity == AssetCheckSeverity.ERROR and "was due at" in check.description
    [materialization] = overdue.get_asset_materialization_events()
    metadata = {key: value.value for key, value in materialization.materialization.metadata.items()}
    assert metadata["primary"] == 1 and metadata["primary_overdue"] is True
    assert metadata["v1/rows"] == len(written)
    assert 2.99 < metadata["v1/age_days"] < 3.01 and 2.99 < metadata["primary_age_days"] < 3.01
    assert metadata["kek"] == f"environment variable {TEST_KEK_VARIABLE} (env:{TEST_KEK_VARIABLE})"
    assert kek not in repr(metadata) and base64.b64decode(kek).hex() not in repr(metadata)

    rotated = build_definitions(manifest).resolve_job_def(ROTATE_KEYS_JOB).execute_in_process(instance=instance)
    [check] = rotated.get_asset_check_evaluations()
    assert check.passed, "the job rotates first, then records key_status"
    [status] = [e for e in rotated.get_asset_materialization_events() if e.asset_key == AssetKey("key_status")]
    after = {key: value.value for key, value in status.materialization.metadata.items()}
    assert after["primary"] == 2 and after["v2/rows"] == len(written) and after["v1/rows"] == 0


def test_the_schedule_runs_rotate_keys_on_keys_cron_in_utc(tmp_path, kek):
    (tmp_path / "grace.yaml").write_text(
        keys_manifest(f"sqlite:///{tmp_path / 'grace.db'}").replace("rewrap_batch: 7", "cron: '15 4 * * 1'")
    )
    manifest = load_manifest(tmp_path / "grace.yaml")
    defs = build_definitions(manifest)
    schedule = defs.resolve_schedule_def("rotate_keys_schedule")
    assert schedule.job_name == ROTATE_KEYS_JOB and schedule.cron_schedule == "15 4 * * 1"
    assert schedule.execution_timezone == "UTC" and schedule.default_status == DefaultScheduleStatus.RUNNING
    with DagsterInstance.ephemeral() as instance:
        context = build_schedule_context(instance=instance, scheduled_execution_time=utc_now())
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.run_key
    assert defs.resolve_job_def(ROTATE_KEYS_JOB).tags[ORIGIN_TAG] == KEYS_ORIGIN, "UI launches carry it too"


def test_the_routed_rotate_keys_task_rotates_and_rewraps(deployment):
    manifest, store = deployment
    vault = vault_of(manifest, store)
    vault.rotate(utc_now() - timedelta(hours=1))
    written = seed_text(vault, documents_count=2)
    with pytest.raises(TaskRejected, match="payload.force"):
        accept_task({"type": "rotate_keys", "origin": "ops", "payload": {"force": "yes"}}, manifest)
    with pytest.raises(TaskRejected, match="payload.version"):
        accept_task({"type": "rotate_keys", "origin": "ops", "payload": {"version": 1}}, manifest)

    task = accept_task({"type": "rotate_keys", "origin": "ops", "payload": {"force": True}}, manifest)
    store.tasks.add(task, "cli")
    defs = build_definitions(manifest)
    result = defs.resolve_job_def(task_job_name("rotate_keys")).execute_in_process(
        run_config=task_run_config(task.task_id),
        instance=DagsterInstance.ephemeral(),
        resources={"embedder": HashingEmbedderResource()},
        tags=task_run_tags(task, manifest.routing.origins),
    )
    assert result.success
    outcome = store.tasks.get(task.task_id).as_dict()
    assert outcome["error"] is None
    assert outcome["result"]["rotated"] is True and outcome["result"]["primary"] == 2
    assert outcome["result"]["rewrapped"] == {
        "documents.text": 2,
        "chunks.text": 10,
        "staged_chunks.text": 0,
        "chunks.context": 0,  # seed_text writes chunks without a title or heading
        "staged_chunks.context": 0,
    }
    assert read_text(vault) == (written, {2})
    [rotated] = [entry for entry in vault.audit_entries() if entry.event == KeyEvent.ROTATED]
    assert rotated.run_id == result.run_id


def test_on_the_real_model_search_finds_the_same_text_after_a_rotation(tmp_path, store_url):
    deployment = Deployment(tmp_path, store_url, EmbedderResource(), max_bytes="20KB")
    whales = "Blue whales are the largest animals known to have lived on Earth; they feed on krill."
    deployment.drop("whales.md", whales)
    deployment.drop("trains.md", "The night train to Vienna leaves from platform nine at eleven.")
    deployment.sync()
    [before] = deployment.search("enormous sea mammals", k=1)
    assert (before.path, before.text) == ("whales.md", whales)

    job = deployment.defs.resolve_job_def(ROTATE_KEYS_JOB)
    rotated = job.execute_in_process(run_config=FORCE, instance=deployment.instance)
    assert rotated.success
    [after] = deployment.search("enormous sea mammals", k=1)
    assert (after.path, after.text, after.chunk) == (before.path, whales, before.chunk)
    vault = vault_of(deployment.manifest, deployment.store)
    plain, versions = read_text(vault)
    assert versions == {2} and whales in plain.values(), "every row moved to version 2 and still decrypts"

"""The Dagster UI tells the story: every asset has owners, kinds and a description; a vector_index partition's
metadata is its shard's alone; index_status, reported by the index_freshness sensor without a run, holds the
whole corpus's totals and a table of every shard; its checks and the overdue-key check pass and fail for real;
the folder sensor says what a tick recorded."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    build_sensor_context,
    materialize,
)
from dagster._core.definitions.utils import is_valid_owner as dagster_is_valid_owner
from sqlalchemy import update

import grace.sensors.index_freshness as freshness_module
from grace.core.manifest import load_manifest
from grace.core.manifest_errors import ManifestError
from grace.core.owners import is_valid_owner
from grace.definitions import build_definitions
from grace.resources.db.key_tables import KeyStatus, KeyVersion
from grace.resources.db.schema import embeddings, utc_now
from grace.resources.keys.overdue import primary_finding
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment, manifest_text

NOTES = {f"note{n}.txt": f"note {n} about topic{n} and word{n * 3} with colour{n % 4}" for n in range(8)}


@pytest.fixture
def deployment(tmp_path, store_url):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=3)
    for name, text in NOTES.items():
        deployment.drop(name, text)
    deployment.sync()
    return deployment


def tick(deployment: Deployment, name: str):
    """One tick of a sensor, as the sensor daemon evaluates it: its asset events are recorded, its cursor kept."""
    context = build_sensor_context(
        instance=deployment.instance,
        cursor=deployment.cursors.get(name),
        resources=deployment.resources,
        repository_def=deployment.defs.get_repository_def(),
    )
    data = deployment.defs.resolve_sensor_def(name).evaluate_tick(context)
    for event in data.asset_events:
        deployment.instance.report_runless_asset_event(event)
    deployment.cursors[name] = data.cursor
    return data


def tick_freshness(deployment: Deployment):
    return tick(deployment, "index_freshness")


def latest_metadata(deployment: Deployment, key: str, partition: str | None = None) -> dict:
    records = deployment.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    ).records
    return {name: value.value for name, value in records[0].asset_materialization.metadata.items()}


def latest_check(deployment: Deployment, asset: str, check: str):
    [record] = deployment.instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(AssetKey(asset), check), limit=1
    )
    return record.event.dagster_event.event_specific_data


def test_every_asset_has_owners_kinds_and_a_description(tmp_path):
    (tmp_path / "grace.yaml").write_text(manifest_text() + "owners: [search@example.com, 'team:knowledge']\n")
    defs = build_definitions(load_manifest(tmp_path / "grace.yaml"))
    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    assert set(specs) == {
        "sources/docs",
        "documents",
        "chunks",
        "embeddings",
        "vector_index",
        "index_status",
        "routing_stats",
        "key_versions",
        "key_status",
    }
    for key, spec in specs.items():
        assert spec.owners == ["search@example.com", "team:knowledge"], key
        assert spec.kinds, key
        assert spec.description and len(spec.description) > 80, key
    checks = {(check.asset_key.to_user_string(), check.name) for check in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {
        ("vector_index", "index_covers_every_embedding"),
        ("vector_index", "index_matches_store"),
        ("index_status", "no_orphan_vectors"),
        ("key_status", "primary_not_overdue"),
        ("sources/docs", "deletes_not_held"),
    }


@pytest.mark.parametrize(
    "owner", ["you@example.com", "a.b+c@mail.example.org", "team:search", "team:x", "team:", "bob", "x@y", "", "@a.io"]
)
def test_owners_follow_dagsters_rule_and_a_bad_one_names_its_field(tmp_path, owner):
    assert is_valid_owner(owner) == dagster_is_valid_owner(owner)
    (tmp_path / "grace.yaml").write_text(f"sources: []\nowners: [{json.dumps(owner)}]\n")
    if is_valid_owner(owner):
        assert load_manifest(tmp_path / "grace.yaml").owners == [owner]
    else:
        with pytest.raises(
            ManifestError, match=r"grace.yaml:2: owners\[0\]: .* is neither an email address nor a team"
        ):
            load_manifest(tmp_path / "grace.yaml")


def test_partitions_are_per_shard_and_index_status_holds_the_whole_corpus(deployment):
    stats = deployment.stats()
    assert stats["total"]["total_embeddings"] == len(NOTES)
    shards = [row for row in stats["shards"] if row["total_embeddings"]]
    assert len(shards) >= 2, "the notes must spread over several shards"
    for row in stats["shards"]:
        partition = latest_metadata(deployment, "vector_index", str(row["shard"]))
        assert partition["shard"] == row["shard"]
        assert partition["shard_embeddings"] == row["total_embeddings"] < len(NOTES)
        assert partition["shard_index_coverage"] == 1.0 and partition["shard_pending"] == 0
        assert not [key for key in partition if "total" in key], "a partition never shows a total"

    data = tick_freshness(deployment)
    assert not data.run_requests and data.skip_message.endswith("index_status reported")
    status = latest_metadata(deployment, "index_status")
    assert status["total_embeddings"] == len(NOTES) == stats["total"]["total_embeddings"]
    assert status["indexed_embeddings"] == len(NOTES) and status["pending"] == 0 and status["index_coverage"] == 1.0
    assert status["documents_active"] == len(NOTES) and status["chunks"] == len(NOTES)
    assert (status["orphan_vectors"], status["stored_vectors"]) == (0, len(NOTES))
    rows = status["shards"].records
    assert [row.data["shard"] for row in rows] == [0, 1, 2]
    assert [row.data["embeddings"] for row in rows] == [row["total_embeddings"] for row in stats["shards"]]
    assert sum(row.data["embeddings"] for row in rows) == status["total_embeddings"]
    assert [column.name for column in status["shards"].schema.columns][:3] == ["shard", "embeddings", "indexed"]
    orphans = latest_check(deployment, "index_status", "no_orphan_vectors")
    assert orphans.passed and orphans.metadata["orphan_vectors"].value == 0

    again = tick_freshness(deployment)
    assert not again.asset_events and again.skip_message.endswith("index_status unchanged, not reported")
    assert json.loads(again.cursor) == json.loads(data.cursor)


def test_the_orphan_check_fails_when_sweeps_stop_and_passes_once_rebuilds_sweep(deployment, monkeypatch):
    monkeypatch.setattr(freshness_module, "REPORT_MIN_SECONDS", 0.0)
    tick_freshness(deployment)
    for name in list(NOTES)[:3]:
        (deployment.inbox / name).unlink()
    deployment.sync(rebuild=False)
    # The deleted notes' vectors are older than the sweep's 30-minute grace, and no rebuild_index ran since.
    with deployment.store.writer.begin() as connection:
        connection.execute(update(embeddings).values(created_at=utc_now() - timedelta(hours=2)))
    tick_freshness(deployment)
    failed = latest_check(deployment, "index_status", "no_orphan_vectors")
    assert not failed.passed and failed.severity == AssetCheckSeverity.WARN
    assert failed.metadata["orphan_vectors"].value == 3 and failed.metadata["stored_vectors"].value == len(NOTES)
    assert "no rebuild_index run has swept them" in failed.description
    status = latest_metadata(deployment, "index_status")
    assert status["total_embeddings"] == len(NOTES) - 3 and status["orphan_vectors"] == 3

    executed = materialize(  # the UI's Execute on the check computes the same
        [*deployment.defs.assets, *deployment.defs.asset_checks],
        selection=AssetSelection.checks(AssetCheckKey(AssetKey("index_status"), "no_orphan_vectors")),
        resources=deployment.resources,
        instance=deployment.instance,
    )
    [evaluation] = executed.get_asset_check_evaluations()
    assert executed.success and not evaluation.passed and evaluation.metadata["orphan_vectors"].value == 3

    for shard in range(deployment.manifest.index.shards):
        assert deployment.rebuild(shard).success  # each rebuild sweeps its share of the vectors
    tick_freshness(deployment)
    swept = latest_check(deployment, "index_status", "no_orphan_vectors")
    assert swept.passed and swept.metadata["orphan_vectors"].value == 0
    assert latest_metadata(deployment, "index_status")["stored_vectors"] == len(NOTES) - 3


def key_version(version: int, created: datetime, life: timedelta) -> KeyVersion:
    return KeyVersion(version, KeyStatus.PRIMARY, "kek", created, created + life, None)


def test_a_primary_is_overdue_only_after_the_schedule_should_have_rotated_it():
    due = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    versions = [key_version(4, due - timedelta(days=30), timedelta(days=30))]
    on_time = primary_finding(versions, "0 3 * * *", due + timedelta(hours=17, minutes=30))  # 03:30 next day
    assert on_time.passed and "rotates it at its next tick" in on_time.description
    assert on_time.metadata["overdue_after"] == "2026-11-27T04:00:00+00:00"
    late = primary_finding(versions, "0 3 * * *", due + timedelta(hours=18, minutes=30))
    assert not late.passed and "was due at 2026-11-26T10:00:00+00:00" in late.description
    assert late.metadata["hours_past_due"] == 18.5 and late.metadata["primary_age_days"] == 30.771
    assert primary_finding(versions, "0 3 * * *", due - timedelta(days=1)).description.endswith(
        "is due at " + due.isoformat()
    )


def tick_keys(deployment: Deployment):
    return tick(deployment, "keys_overdue")


def test_the_keys_overdue_sensor_fails_the_check_when_rotation_stopped(tmp_path):
    deployment = Deployment(tmp_path, None, HashingEmbedderResource(), shards=1)
    vault = deployment.resources["key_vault"].get()
    vault.rotate(utc_now() - timedelta(days=40))  # rotate_every 30d: due ten days ago, and nothing rotated it
    stopped = tick_keys(deployment)
    check = latest_check(deployment, "key_status", "primary_not_overdue")
    assert not check.passed and check.severity == AssetCheckSeverity.ERROR
    assert "check that rotate_keys_schedule is running" in check.description
    assert 9.9 < check.metadata["hours_past_due"].value / 24 < 10.1
    assert stopped.skip_message == check.description

    assert not tick_keys(deployment).asset_events, "an unchanged outcome is recorded again only hourly"
    vault.rotate()
    tick_keys(deployment)
    assert latest_check(deployment, "key_status", "primary_not_overdue").passed


def test_the_folder_sensor_says_what_a_tick_recorded_without_a_run(tmp_path):
    deployment = Deployment(tmp_path, None, HashingEmbedderResource(), shards=1)
    deployment.drop("a.txt", "the heron waits by the reeds")
    deployment.sync()
    quiet = tick(deployment, "watch_docs")
    assert quiet.skip_message == f"no changes in {deployment.inbox} (full scan)"
    (deployment.inbox / "a.txt").rename(deployment.inbox / "b.txt")
    moved = tick(deployment, "watch_docs")
    assert not moved.run_requests
    assert moved.skip_message == f"recorded 1 move (a.txt -> b.txt) in {deployment.inbox}, no run needed (full scan)"
    assert [hit.path for hit in deployment.search("heron", k=1)] == ["b.txt"]

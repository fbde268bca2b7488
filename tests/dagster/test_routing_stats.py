"""Routing stats: counted from a real instance's runs and the tasks table, on SQLite and PostgreSQL;
the routing_stats asset records them as numeric metadata on its schedule."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    build_schedule_context,
    instance_for_test,
    materialize,
)
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

from grace.core.manifest import load_manifest
from grace.core.names import ORIGIN_TAG, ROUTING_STATS_JOB, UNLISTED_ORIGIN_TAG, origin_tags
from grace.core.routing_config import run_queue_limits
from grace.pipelines import build_pipelines
from grace.resources.db.schema import utc_now
from grace.resources.store.store import Store
from grace.resources.store.taskbook import FAILED, QUEUED, RECEIVED, SUCCEEDED
from grace.resources.tasks.project_handlers import accept_task
from grace.resources.tasks.routing_report import WINDOW_SECONDS, nearest_rank, routing_stats
from grace.resources.wiring.dagster_resources import StoreResource, build_resources

MANIFEST = (
    "state_dir: state\nstore: {url}\nsources: []\n"
    "routing:\n  capacity: 20\n  default_quota: 3\n  origins: {{intent: 12, ingest: 8}}\n"
    "  routes: {{echo: echo}}\n  handlers: {handlers}\n"
)


@pytest.fixture
def manifest(tmp_path, store_url):
    from tests.helpers.routing_daemon import REPOSITORY

    path = tmp_path / "grace.yaml"
    path.write_text(MANIFEST.format(url=store_url, handlers=REPOSITORY / "handlers"))
    return load_manifest(path)


@pytest.fixture
def store(manifest):
    store = Store(manifest.store_url)
    yield store
    store.dispose()


# Dagster wants a queued run to say where its job comes from.
JOB_ORIGIN = RemoteJobOrigin(
    RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("grace"), "__repository__"), "task_echo"
)


def add_runs(instance: DagsterInstance, origin: str | None, status: DagsterRunStatus, count: int = 1) -> None:
    tags = {ORIGIN_TAG: origin} if origin else {}
    for _ in range(count):
        instance.add_run(
            DagsterRun(
                job_name="task_echo",
                run_id=str(uuid.uuid4()),
                status=status,
                tags=tags,
                remote_job_origin=JOB_ORIGIN,
            )
        )


def add_task(store: Store, manifest, origin: str, received_ago_s: float = 60, **ended) -> str:
    task = accept_task({"type": "echo", "origin": origin, "payload": {"message": "m"}}, manifest)
    store.tasks.add(task, "cli", now=utc_now() - timedelta(seconds=received_ago_s))
    if ended:
        assert store.tasks.move(task.task_id, RECEIVED, **ended)
    return task.task_id


@pytest.mark.parametrize(
    ("values", "p50", "p95"),
    [([], None, None), ([7], 7, 7), ([1, 2, 3, 4], 2, 4), (list(range(1, 101)), 50, 95), ([5, 5, 9], 5, 9)],
)
def test_percentiles_are_nearest_rank(values, p50, p95):
    assert (nearest_rank(values, 50), nearest_rank(values, 95)) == (p50, p95)


def test_stats_count_runs_per_origin_and_waits_and_breaches_from_the_tasks(manifest, store):
    instance = DagsterInstance.ephemeral()
    add_runs(instance, "intent", DagsterRunStatus.STARTED, 2)
    add_runs(instance, "intent", DagsterRunStatus.STARTING)
    add_runs(instance, "intent", DagsterRunStatus.QUEUED, 4)
    add_runs(instance, "intent", DagsterRunStatus.SUCCESS, 5)  # ended: counted nowhere
    add_runs(instance, "stray", DagsterRunStatus.NOT_STARTED)  # unlisted, seen only in flight
    add_runs(instance, "gone", DagsterRunStatus.FAILURE)  # an origin with nothing in flight: not listed
    add_runs(instance, None, DagsterRunStatus.STARTED)  # no origin tag: in the totals only
    waits = [100, 300, 200, 5000]
    for index, wait in enumerate(waits):
        add_task(store, manifest, "intent", status=SUCCEEDED, queue_wait_ms=wait, sla_met=index != 3)
    add_task(store, manifest, "intent", status=FAILED, queue_wait_ms=None, sla_met=False)
    add_task(
        store,
        manifest,
        "intent",
        received_ago_s=WINDOW_SECONDS + 60,
        status=SUCCEEDED,
        queue_wait_ms=99_999,
        sla_met=False,
    )
    add_task(store, manifest, "batch", status=QUEUED, queue_wait_ms=40)

    stats = routing_stats(instance, store.tasks, manifest.routing)

    assert (stats["capacity"], stats["running"], stats["queued"]) == (20, 4, 5)
    assert stats["window_seconds"] == WINDOW_SECONDS
    assert stats["instance_drift"] and "not a queue" in stats["instance_drift"][0], "the ephemeral instance has none"
    assert sorted(stats["origins"]) == ["batch", "ingest", "intent", "stray"]
    intent = stats["origins"]["intent"]
    assert intent == {
        "quota": 12,
        "current_count": 3,
        "queued": 4,
        "quota_used": "3/12",
        "utilization": 0.25,
        "sla_breaches": 3,  # two in the window, one before it: breaches count since the store began
        "queue_wait_p50_ms": 200,
        "queue_wait_p95_ms": 5000,
        "succeeded": 4,
        "failed": 1,
    }
    stray = stats["origins"]["stray"]
    assert [stray[key] for key in ("quota", "current_count", "queued", "quota_used", "utilization")] == [
        3,
        0,
        1,
        "0/3",
        0.0,
    ], "an unlisted origin gets the default quota"
    assert stats["origins"]["batch"]["queue_wait_p50_ms"] == 40 and stats["origins"]["batch"]["quota_used"] == "0/3"
    assert stats["origins"]["ingest"]["queue_wait_p95_ms"] is None and stats["origins"]["ingest"]["quota"] == 8


def test_an_instance_rendered_from_the_manifest_shows_no_drift(manifest, store):
    queue = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    with instance_for_test(
        overrides={"run_coordinator": {**queue, "config": run_queue_limits(manifest.routing)}}
    ) as instance:
        assert routing_stats(instance, store.tasks, manifest.routing)["instance_drift"] == []
    wider = {**run_queue_limits(manifest.routing), "max_concurrent_runs": 99}
    with instance_for_test(overrides={"run_coordinator": {**queue, "config": wider}}) as instance:
        [drift] = routing_stats(instance, store.tasks, manifest.routing)["instance_drift"]
        assert "max_concurrent_runs is 99" in drift


def test_the_routing_stats_asset_records_numeric_metadata_and_runs_on_its_schedule(manifest, store):
    definitions = Definitions.merge(build_pipelines(manifest), Definitions(resources=build_resources(manifest)))
    instance = DagsterInstance.ephemeral()
    add_runs(instance, "intent", DagsterRunStatus.STARTED, 3)
    add_task(store, manifest, "intent", status=SUCCEEDED, queue_wait_ms=250, sla_met=False)

    [stats_asset] = [asset for asset in definitions.assets if asset.key.path == ["routing_stats"]]
    result = materialize([stats_asset], resources={"store": StoreResource(url=manifest.store_url)}, instance=instance)

    assert result.success
    metadata = {
        key: value.value
        for key, value in result.asset_materializations_for_node("record_routing_stats")[0].metadata.items()
    }
    assert metadata["intent/utilization"] == 0.25 and metadata["intent/current_count"] == 3
    assert metadata["intent/queued"] == 0 and metadata["intent/sla_breaches"] == 1
    assert metadata["intent/queue_wait_p50_ms"] == 250 and metadata["intent/queue_wait_p95_ms"] == 250
    assert "ingest/queue_wait_p50_ms" not in metadata, "no waits yet: no value rather than a false zero"
    assert metadata["ingest/utilization"] == 0.0
    running_with_itself = 3 + 1
    assert (metadata["running"], metadata["queued"], metadata["capacity"]) == (running_with_itself, 0, 20)
    assert metadata["instance_drift"] == 1, "the ephemeral instance has no run queue"
    assert all(isinstance(value, int | float) for value in metadata.values())

    job = definitions.resolve_job_def(ROUTING_STATS_JOB)
    assert job.asset_layer.executable_asset_keys == {stats_asset.key}
    schedule = definitions.resolve_schedule_def("routing_stats_schedule")
    assert schedule.cron_schedule == manifest.routing.stats_cron and schedule.execution_timezone == "UTC"
    [request] = schedule.evaluate_tick(
        build_schedule_context(instance, scheduled_execution_time=utc_now())
    ).run_requests
    assert request.tags.items() >= origin_tags("routing", manifest.routing.origins).items()
    assert request.tags[UNLISTED_ORIGIN_TAG] == "routing", "its runs count against the default quota"

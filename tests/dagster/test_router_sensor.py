"""The route_tasks sensor on a real Dagster instance: task files become run requests carrying the job,
the config, the run key and every routing tag; an instance whose run queue drifted from grace.yaml
requests nothing and says why; a task grace.yaml no longer routes fails with the reason."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

import pytest
from dagster import DagsterInstance, Definitions, build_sensor_context, instance_for_test

from grace.core.manifest import load_manifest
from grace.core.routing_config import run_queue_limits
from grace.core.task_model import Task
from grace.pipelines import build_pipelines
from grace.pipelines.task_jobs import build_task_jobs
from grace.resources.store.store import Store
from grace.resources.store.taskbook import FAILED, RECEIVED, SUCCEEDED
from grace.resources.wiring.dagster_resources import StoreResource, build_resources
from grace.sensors import router
from grace.sensors.router import RunQueueDrift, build_router_sensor
from grace.sensors.scan import reconcile
from grace.sensors.task_lifecycle import follow_runs
from tests.helpers.harness import ensure_key_file

SEED_INTENT = {"intent_id": "test_intent", "goal": "Test goal", "domain": "test", "sla_ms": 30000, "priority": "normal"}


@pytest.fixture
def deployment(tmp_path, store_url):
    (tmp_path / "grace.yaml").write_text(
        f"state_dir: state\nstore: {store_url}\n"
        "sources:\n  - {name: docs, path: docs, patterns: ['**/*.md']}\n"
        "index:\n  shards: 2\n  trees: 5\n"
        "routing:\n  capacity: 10\n  default_quota: 3\n  origins: {intent: 6, ingest: 4}\n"
        "  routes: {test: search, search: search, ingest: ingest}\n"
    )
    manifest = load_manifest(tmp_path / "grace.yaml")
    jobs = build_task_jobs(manifest)
    store = Store(store_url)
    defs = Definitions(jobs=jobs, sensors=[build_router_sensor(manifest, jobs)])
    yield manifest, store, defs
    store.dispose()


@contextmanager
def queued_instance(limits: dict):
    overrides = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": limits,
        }
    }
    with instance_for_test(overrides=overrides) as instance:
        yield instance


def drop(manifest, name: str, content: dict) -> None:
    folder = manifest.routing.inbox
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(content))
    stamp = time.time() - 5
    os.utime(folder / name, (stamp, stamp))


def tick(defs: Definitions, instance: DagsterInstance, store_url: str):
    with build_sensor_context(instance=instance, resources={"store": StoreResource(url=store_url)}) as context:
        return defs.resolve_sensor_def("route_tasks")(context)


def test_received_tasks_become_run_requests_with_job_config_run_key_and_every_tag(deployment, store_url):
    manifest, store, defs = deployment
    drop(manifest, "intent.json", SEED_INTENT)
    drop(
        manifest,
        "bob.json",
        {
            "task_id": "bob-1",
            "type": "search",
            "origin": "bob",
            "priority": "high",
            "sla_ms": 900,
            "payload": {"query": "cats", "k": 2},
        },
    )
    drop(manifest, "broken.json", {"type": "search"})

    with queued_instance(run_queue_limits(manifest.routing)) as instance:
        result = tick(defs, instance, store_url)

    requests = {request.run_key: request for request in result.run_requests}
    assert set(requests) == {"test_intent", "bob-1"}
    intent = requests["test_intent"]
    assert intent.job_name == "task_search"
    assert intent.run_config == {"ops": {"run_task": {"config": {"task_id": "test_intent"}}}}
    size = len(b'{"domain":"test","goal":"Test goal","intent_id":"test_intent"}')
    assert intent.tags == {
        "grace/origin": "intent",
        "grace/task_id": "test_intent",
        "grace/task_type": "test",
        "dagster/priority": "0",
        "grace/sla_ms": "30000",
        "grace/data_size_bytes": str(size),
        "dagster/retry_on_asset_or_op_failure": "false",
    }
    bob = requests["bob-1"].tags
    assert bob["grace/origin"] == "bob" and bob["grace/unlisted_origin"] == "bob", "an unlisted origin: default quota"
    assert bob["dagster/priority"] == "10" and bob["grace/sla_ms"] == "900"
    assert bob["grace/data_size_bytes"] == str(len(b'{"k":2,"query":"cats"}'))
    assert (manifest.routing.inbox / "rejected" / "broken.json").exists()
    assert store.tasks.counts_by_status() == {RECEIVED: 2}


def test_a_drifting_run_queue_requests_nothing_and_names_each_difference(deployment, store_url):
    manifest, store, defs = deployment
    drop(manifest, "intent.json", SEED_INTENT)
    limits = run_queue_limits(manifest.routing)
    drifted = {**limits, "max_concurrent_runs": 99, "tag_concurrency_limits": limits["tag_concurrency_limits"][1:]}

    with queued_instance(drifted) as instance, pytest.raises(RunQueueDrift) as caught:
        tick(defs, instance, store_url)

    message = str(caught.value)
    assert "max_concurrent_runs is 99, grace.yaml's capacity is 10" in message
    assert "limit on grace/origin=ingest is missing, grace.yaml says 4" in message
    assert "grace dev" in message
    assert store.tasks.get("test_intent").status == RECEIVED, "the file was still accepted"

    with pytest.raises(RunQueueDrift, match="not a queue: no capacity or quota is enforced"):
        tick(defs, DagsterInstance.ephemeral(), store_url)


def test_a_task_grace_yaml_no_longer_routes_fails_with_the_reason(deployment, store_url):
    manifest, store, defs = deployment
    stale = dict(priority=0, sla_ms=1000, payload={"query": "x"}, data_size_bytes=13)
    store.tasks.add(Task("retired-type", "lookup", "cli", handler="search", **stale), "cli")
    store.tasks.add(Task("retired-handler", "search", "cli", handler="fetch", **stale), "cli")
    store.tasks.add(Task("fine", "search", "cli", handler="search", **stale), "cli")

    with queued_instance(run_queue_limits(manifest.routing)) as instance:
        result = tick(defs, instance, store_url)

    assert [request.run_key for request in result.run_requests] == ["fine"]
    retired_type, retired_handler = store.tasks.get("retired-type"), store.tasks.get("retired-handler")
    assert retired_type.status == FAILED and "task type 'lookup' is no longer routed" in retired_type.error
    assert retired_handler.status == FAILED and "its handler 'fetch' has no job" in retired_handler.error
    assert retired_type.finished_at is not None and retired_type.sla_met is None


def test_a_tick_routes_at_most_a_batch_oldest_first(deployment, store_url, monkeypatch):
    manifest, store, defs = deployment
    monkeypatch.setattr(router, "ROUTE_BATCH", 2)
    for number in range(3):
        task = Task(f"t{number}", "search", "cli", 0, 1000, {"query": "x"}, 13, "search")
        store.tasks.add(task, "cli")
        time.sleep(0.01)  # distinct received_at

    with queued_instance(run_queue_limits(manifest.routing)) as instance:
        result = tick(defs, instance, store_url)

    assert [request.run_key for request in result.run_requests] == ["t0", "t1"]


def test_a_routed_intent_runs_its_handler_on_the_real_model_and_ends_succeeded(deployment, store_url):
    manifest, store, defs = deployment
    ensure_key_file(manifest)  # as `grace dev` does on first start: ingest seals text under it
    docs = manifest.sources[0]
    docs.path.mkdir(parents=True)
    (docs.path / "cats.md").write_text("Cats purr and sleep most of the day in warm sunny spots.")
    (docs.path / "rust.md").write_text("The borrow checker enforces ownership rules at compile time.")
    reconcile(store, docs, 1)
    pipelines = Definitions.merge(build_pipelines(manifest), Definitions(resources=build_resources(manifest)))
    drop(manifest, "intent.json", {**SEED_INTENT, "goal": "where do cats like to nap"})

    with queued_instance(run_queue_limits(manifest.routing)) as instance:
        for shard in range(manifest.index.shards):  # the real model embeds both documents
            assert pipelines.resolve_job_def("ingest").execute_in_process(partition_key=str(shard), instance=instance)
        [request] = tick(defs, instance, store_url).run_requests
        job = defs.resolve_job_def(request.job_name)
        run = job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags)
        assert run.success
        moves = follow_runs(instance, store.tasks)

    assert moves == {(RECEIVED, SUCCEEDED): 1}
    task = store.tasks.get("test_intent")
    assert task.status == SUCCEEDED and task.run_id == run.run_id
    assert task.queued_at <= task.started_at <= task.finished_at
    assert task.queue_wait_ms >= 0 and task.run_ms >= 0 and task.sla_met is True
    assert task.error is None
    hits = json.loads(task.result)["hits"]
    assert [hit["path"] for hit in hits] == ["cats.md", "rust.md"], "the real model ranks the cat document first"

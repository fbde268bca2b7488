"""Task jobs on real Dagster: one run per task, its handler's result or error stored with the task.

Runs execute in-process against the deployment's resources, on SQLite and PostgreSQL; the
task_status sensor (not these runs) moves a task's status, so it stays `received` here.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from dagster import DagsterRunStatus

from grace.core.names import BUILTIN_HANDLERS, TASK_ID_TAG, task_job_name
from grace.core.task_model import TASK_OP, TaskRejected, task_run_config, task_run_tags
from grace.pipelines.task_jobs import build_task_jobs
from grace.resources.runs.heartbeat import RunHeartbeat
from grace.resources.runs.lease import HeldShard, ShardLeases
from grace.resources.store.taskbook import FAILED, RECEIVED
from grace.resources.tasks.builtin_handlers import BUILTIN_IMPLEMENTATIONS
from grace.resources.tasks.project_handlers import accept_task
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment
from tests.helpers.routing_daemon import REPOSITORY

TEST_HANDLERS = '''
from grace.core.handler_api import handler
from grace.resources.runs.lease import ShardLeases


@handler("boom")
def boom(payload, context):
    """Always raises."""
    raise RuntimeError(f"the handler broke on {payload['what']}")


@handler("not_json")
def not_json(payload, context):
    """Returns something JSON cannot hold."""
    return {"when": object()}


@handler("alive")
def alive(payload, context):
    """Says whether its run's heartbeat is registered while it runs."""
    beats = ShardLeases(context.services["store"].engine).heartbeats()
    beat = beats.get(context.run_id)
    return {"beating": beat is not None, "shard": beat.shard if beat else "none", "payload": payload}
'''
# Passed as extra_sources: manifest_text places it at the top level, after the sources.
ROUTING = (
    "routing:\n"
    "  routes: {ingest: ingest, search: search, test: search, reindex: reindex, echo: echo,"
    " boom: boom, not_json: not_json, alive: alive}\n"
    "  inbox: tasks\n"
)


def make_deployment(root, store_url, embedder_resource=None) -> Deployment:
    (root / "handlers").mkdir()
    shutil.copy(REPOSITORY / "handlers" / "echo.py", root / "handlers" / "echo.py")
    (root / "handlers" / "testing.py").write_text(TEST_HANDLERS)
    return Deployment(root, store_url, embedder_resource or HashingEmbedderResource(), extra_sources=ROUTING)


@pytest.fixture
def deployment(tmp_path, store_url):
    return make_deployment(tmp_path, store_url)


def submit(deployment: Deployment, **fields) -> str:
    task = accept_task({"origin": "cli-test", **fields}, deployment.manifest)
    deployment.store.tasks.add(task, "cli")
    return task.task_id


def run(deployment: Deployment, task_id: str, handler: str | None = None):
    """Execute the task's job in-process, tagged as the router tags it."""
    record = deployment.store.tasks.get(task_id)
    handler = handler or record.handler
    job = deployment.defs.get_job_def(task_job_name(handler))
    tags = task_run_tags(record.task(), deployment.manifest.routing.origins) if record else {TASK_ID_TAG: task_id}
    return job.execute_in_process(
        run_config=task_run_config(task_id),
        instance=deployment.instance,
        resources={"embedder": deployment.resources["embedder"]},
        tags=tags,
        raise_on_error=False,
    )


def result_of(deployment: Deployment, task_id: str) -> dict:
    return deployment.store.tasks.get(task_id).as_dict()


def test_the_built_in_implementations_are_the_core_built_ins():
    assert set(BUILTIN_IMPLEMENTATIONS) == set(BUILTIN_HANDLERS)


def test_one_job_per_handler_each_with_the_one_task_op(deployment):
    jobs = {job.name: job for job in build_task_jobs(deployment.manifest)}
    handlers = {"ingest", "search", "reindex", "echo", "boom", "not_json", "alive"}
    assert set(jobs) == {task_job_name(name) for name in handlers}, "test and search share task_search"
    for job in jobs.values():
        assert [node.name for node in job.graph.nodes] == [TASK_OP]
    assert {job.name for job in deployment.defs.jobs} >= set(jobs), "build_pipelines includes them"


def test_a_project_handler_result_is_stored_and_the_status_left_to_the_sensor(deployment):
    task_id = submit(deployment, type="echo", payload={"message": "héllo ✓"})
    result = run(deployment, task_id)
    assert result.success
    record = result_of(deployment, task_id)
    assert record["result"] == {"message": "héllo ✓", "origin": "cli-test"}
    assert record["error"] is None and record["status"] == RECEIVED
    [output] = [event for event in result.all_events if event.event_type_value == "STEP_OUTPUT"]
    metadata = output.event_specific_data.metadata
    assert metadata["task_id"].value == task_id and metadata["handler"].value == "echo"
    utf8_json = json.dumps(record["result"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert metadata["result_bytes"].value == len(utf8_json) == 44
    assert metadata["handler_ms"].value >= 0


def test_a_task_run_beats_while_its_handler_runs_and_leaves_no_row(deployment):
    task_id = submit(deployment, type="alive", payload={"n": 1})
    assert run(deployment, task_id).success
    assert result_of(deployment, task_id)["result"] == {"beating": True, "shard": None, "payload": {"n": 1}}
    assert ShardLeases(deployment.store.engine).heartbeats() == {}, "teardown deletes the heartbeat"


def test_a_raising_handler_fails_the_run_and_records_its_error(deployment):
    task_id = submit(deployment, type="boom", payload={"what": "purpose"})
    other = submit(deployment, type="echo", payload={"message": "still fine"})
    result = run(deployment, task_id)
    assert not result.success and result.dagster_run.status == DagsterRunStatus.FAILURE
    record = result_of(deployment, task_id)
    assert record["error"] == "RuntimeError: the handler broke on purpose" and record["result"] is None
    assert run(deployment, other).success, "a failed task blocks no other"


def test_a_result_that_is_not_json_is_a_handler_error(deployment):
    task_id = submit(deployment, type="not_json")
    assert not run(deployment, task_id).success
    error = result_of(deployment, task_id)["error"]
    assert error.startswith("HandlerFailed: handler 'not_json' returned dict, which is not JSON")


def test_an_unknown_task_id_or_the_wrong_job_fails_with_a_clear_message(deployment):
    missing = run(deployment, "no-such-task", handler="echo")
    assert not missing.success
    [failure] = [event for event in missing.all_events if event.event_type_value == "STEP_FAILURE"]
    assert "no task 'no-such-task' in the store" in failure.event_specific_data.error_display_string

    task_id = submit(deployment, type="echo", payload={"message": "x"})
    assert not run(deployment, task_id, handler="alive").success
    assert "routed to handler 'echo', not 'alive'" in result_of(deployment, task_id)["error"]


def test_a_task_that_already_ended_is_not_run_again_and_keeps_its_outcome(deployment):
    task_id = submit(deployment, type="echo", payload={"message": "once"})
    assert deployment.store.tasks.move(task_id, RECEIVED, status=FAILED, error="run r1 ended FAILURE")
    late_retry = run(deployment, task_id)
    assert not late_retry.success
    [failure] = [event for event in late_retry.all_events if event.event_type_value == "STEP_FAILURE"]
    assert f"task {task_id} already ended failed" in failure.event_specific_data.error_display_string
    record = result_of(deployment, task_id)
    assert (record["status"], record["error"], record["result"]) == (FAILED, "run r1 ended FAILURE", None)


def test_ingest_writes_the_file_atomically_and_the_folder_sensor_makes_it_searchable(deployment):
    content = "Lighthouse keepers trimmed the lamp wicks every evening before the storm."
    task_id = submit(
        deployment, type="ingest", task_id="abcdef1234", payload={"title": "Keepers' Log!", "content": content}
    )
    nested = submit(
        deployment, type="ingest", payload={"title": "q3", "content": "revenue grew", "path": "notes/q3.md"}
    )
    assert run(deployment, task_id).success and run(deployment, nested).success

    written = deployment.inbox / "keepers-log-abcdef12.md"
    assert written.read_text() == content
    assert result_of(deployment, task_id)["result"] == {"source": "docs", "path": written.name, "bytes": len(content)}
    assert (deployment.inbox / "notes" / "q3.md").read_text() == "revenue grew"
    assert run(deployment, task_id).success, "a rerun (a retried run) is harmless"
    assert sorted(p.relative_to(deployment.inbox).as_posix() for p in deployment.inbox.rglob("*") if p.is_file()) == [
        "keepers-log-abcdef12.md",
        "notes/q3.md",
    ], "same path, same bytes, and no temporary file left beside it"
    assert not list(deployment.manifest.state_dir.glob("ingest-*.partial"))

    deployment.sync()
    assert deployment.search("lighthouse lamp wicks storm", k=1)[0].path == written.name


def test_ingest_never_writes_through_a_link_nor_over_a_users_file(deployment, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, deployment.inbox / "linked")
    task_id = submit(deployment, type="ingest", payload={"title": "t", "content": "secret", "path": "linked/x.md"})
    assert not run(deployment, task_id).success
    assert "is a link or a file, not a folder" in result_of(deployment, task_id)["error"]
    assert list(outside.iterdir()) == []

    (deployment.inbox / "mine.md").write_text("the user's own words")
    clash = submit(deployment, type="ingest", payload={"title": "t", "content": "other words", "path": "mine.md"})
    assert not run(deployment, clash).success
    assert "Grace never overwrites a user's file" in result_of(deployment, clash)["error"]
    assert (deployment.inbox / "mine.md").read_text() == "the user's own words"


def test_ingest_refuses_content_the_source_would_quarantine(deployment):
    task_id = submit(deployment, type="ingest", payload={"title": "big", "content": "x" * 2000})  # max_bytes 1KB
    assert not run(deployment, task_id).success
    assert "over source 'docs' max_bytes (1000)" in result_of(deployment, task_id)["error"]
    assert not any(deployment.inbox.iterdir())


def test_reindex_rebuilds_the_named_shards_only(deployment):
    for index in range(8):
        deployment.drop(f"doc-{index}.txt", f"document number {index} about topic {index * 7}")
    deployment.sync()
    before = {shard: deployment.index.current(shard).version for shard in (0, 1)}
    task_id = submit(deployment, type="reindex", payload={"shards": [1]})
    time.sleep(0.01)  # versions are nanosecond timestamps
    assert run(deployment, task_id).success

    [rebuilt] = result_of(deployment, task_id)["result"]["shards"]
    assert rebuilt["shard"] == 1 and rebuilt["version"] == deployment.index.current(1).version != before[1]
    assert rebuilt["items"] == deployment.stats()["shards"][1]["indexed_embeddings"] > 0
    assert deployment.index.current(0).version == before[0]
    assert ShardLeases(deployment.store.engine).try_acquire(1, "next-run") is None, "the lease was released"
    with pytest.raises(TaskRejected, match=r"no shard \[7\]"):
        submit(deployment, type="reindex", payload={"shards": [1, 7]})


def test_a_task_runs_lease_leaves_its_run_heartbeat_alone(store_url):
    from grace.resources.store.store import Store

    store = Store(store_url)
    leases = ShardLeases(store.engine)
    with RunHeartbeat(leases, "task-run", renew_seconds=0.05):
        first = leases.heartbeats()["task-run"]
        with HeldShard(leases, "task-run", 0, renew_seconds=0.05, own_heartbeat=False):
            assert leases.try_acquire(0, "other-run") == "task-run"
            time.sleep(0.3)
        assert leases.try_acquire(0, "other-run") is None, "the shard is free again"
        beat = leases.heartbeats()["task-run"]
        assert beat.shard is None and beat.beat_at > first.beat_at, "still beating, for the run"
    assert leases.heartbeats() == {}
    store.dispose()


def test_search_and_the_seed_intent_answer_with_hits_on_the_real_model(tmp_path, store_url):
    deployment = make_deployment(tmp_path, store_url, EmbedderResource())
    deployment.drop("bees.txt", "Honey bees dance to tell the hive where the flowers are.")
    deployment.drop("tax.md", "File your quarterly tax return before the fifteenth of the month.")
    deployment.sync()
    task_id = submit(deployment, type="search", payload={"query": "how do bees communicate", "k": 2})
    intent = accept_task(
        {"intent_id": "intent-1", "goal": "paying taxes on time", "domain": "test"}, deployment.manifest
    )
    deployment.store.tasks.add(intent, "api")
    assert run(deployment, task_id).success and run(deployment, intent.task_id).success

    result = result_of(deployment, task_id)["result"]
    assert result["query"] == "how do bees communicate"
    assert [hit["path"] for hit in result["hits"]] == ["bees.txt", "tax.md"]
    assert result["hits"][0]["score"] > result["hits"][1]["score"]
    assert result_of(deployment, "intent-1")["result"]["hits"][0]["path"] == "tax.md"

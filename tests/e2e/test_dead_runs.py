"""Dead runs free their shard (or their task's retry): the run_health sensor on a real instance (fast), one `grace dev`
per state dir, the rendered instance, and a run worker killed with SIGKILL under a real `grace dev`."""

from __future__ import annotations

import fcntl
import json
import random
import signal
import time
import uuid
from datetime import timedelta

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from grace.cli.main import main
from grace.core.manifest import load_manifest
from grace.core.names import DEV_LOCK, INGEST_JOB, PARTITION_TAG, REASON_TAG, REBUILD_JOB, ingest_tags, rebuild_tags
from grace.core.task_model import Task, task_run_tags
from grace.deploy.instance import CANCEL_TIMEOUT_SECONDS, render_instance
from grace.resources.db.schema import utc_now
from grace.resources.runs.lease import HEARTBEAT_TTL_SECONDS, ShardLeases
from grace.resources.wiring.dagster_resources import build_resources
from grace.sensors.run_health import STARTUP_GRACE_SECONDS, find_dead_runs
from grace.sensors.run_records import run_in_flight
from tests.helpers.daemon import embedding_run, grace, wait_for
from tests.helpers.devserver import DevServer, free_port
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment


def add_run(instance: DagsterInstance, job_name: str, shard: int, status: DagsterRunStatus, tags=None) -> DagsterRun:
    run = DagsterRun(
        job_name=job_name,
        run_id=str(uuid.uuid4()),
        status=status,
        tags={**(tags or {}), PARTITION_TAG: str(shard)},
    )
    return instance.add_run(run)


def test_run_health_fails_a_silent_run_frees_its_shard_and_requests_it_again(tmp_path, store_url):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2)
    instance, leases = deployment.instance, ShardLeases(deployment.store.engine)
    dead = add_run(instance, INGEST_JOB, 0, DagsterRunStatus.STARTED, ingest_tags("ingest", "docs", 0, 10, ()))
    live = add_run(instance, INGEST_JOB, 1, DagsterRunStatus.STARTED, ingest_tags("ingest", "docs", 1, 10, ()))
    canceling = add_run(instance, REBUILD_JOB, 1, DagsterRunStatus.CANCELING, rebuild_tags(1, "schedule", ()))
    now = utc_now()
    stale = now - timedelta(seconds=HEARTBEAT_TTL_SECONDS + 30)
    leases.beat(dead.run_id, 0, now=stale)
    assert leases.try_acquire(0, dead.run_id, now=now) is None  # a lease still valid: only the reaper frees it
    leases.beat(live.run_id, 1, now=now)
    assert leases.try_acquire(1, live.run_id, now=now) is None
    leases.beat(canceling.run_id, 1, now=stale)
    ended = add_run(instance, INGEST_JOB, 1, DagsterRunStatus.FAILURE)  # failed by Dagster; rows left behind
    leases.beat(ended.run_id, 1, now=stale)

    [request] = deployment.tick("run_health")

    assert request.partition_key == "0", "the dead ingest shard is requested again; rebuilds are index_freshness's"
    assert request.tags["grace/origin"] == "ingest" and request.tags["grace/source"] == "docs"
    assert request.tags[REASON_TAG] == f"run {dead.run_id} died"
    status = {run.run_id: run.status for run in instance.get_runs()}
    assert status[dead.run_id] == DagsterRunStatus.FAILURE
    assert status[canceling.run_id] == DagsterRunStatus.CANCELED
    assert status[live.run_id] == DagsterRunStatus.STARTED
    assert set(leases.heartbeats()) == {live.run_id}
    assert leases.try_acquire(0, "next-run") is None, "the dead run's lease is gone"
    assert leases.try_acquire(1, "next-run") == live.run_id, "the live run keeps its shard"
    assert deployment.tick("run_health") == [], "nothing left to reap"


def test_a_run_that_never_beat_is_dead_only_after_the_start_up_grace():
    instance = DagsterInstance.ephemeral()
    ingest = add_run(instance, INGEST_JOB, 0, DagsterRunStatus.STARTED)
    add_run(instance, "__ASSET_JOB", 1, DagsterRunStatus.STARTED)  # watched only once it beats
    soon = utc_now() + timedelta(seconds=STARTUP_GRACE_SECONDS / 2)
    late = utc_now() + timedelta(seconds=STARTUP_GRACE_SECONDS + 5)
    assert find_dead_runs(instance, {}, soon) == []
    [dead] = find_dead_runs(instance, {}, late)
    assert (dead.run.run_id, dead.shard) == (ingest.run_id, 0)
    assert "never registered a heartbeat" in dead.reason


def add_task_run(instance: DagsterInstance, job_name: str, status: DagsterRunStatus) -> DagsterRun:
    task = Task(uuid.uuid4().hex, "echo", "intent", 0, 30_000, {}, 2, job_name.removeprefix("task_"))
    tags = task_run_tags(task, ("intent",))
    return instance.add_run(DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), status=status, tags=tags))


def test_run_health_fails_a_silent_task_run_frees_its_lease_and_requests_no_shard(tmp_path, store_url):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2)
    instance, leases = deployment.instance, ShardLeases(deployment.store.engine)
    dead = add_task_run(instance, "task_reindex", DagsterRunStatus.STARTED)
    live = add_task_run(instance, "task_echo", DagsterRunStatus.STARTED)
    now = utc_now()
    leases.beat(dead.run_id, None, now=now - timedelta(seconds=HEARTBEAT_TTL_SECONDS + 30))
    assert leases.try_acquire(1, dead.run_id, now=now) is None  # a reindex task holding shard 1
    leases.beat(live.run_id, None, now=now)

    assert deployment.tick("run_health") == [], "a task's retry is the instance's run retries, not a shard run"

    status = {run.run_id: run.status for run in instance.get_runs()}
    assert status[dead.run_id] == DagsterRunStatus.FAILURE and status[live.run_id] == DagsterRunStatus.STARTED
    [failure] = instance.get_records_for_run(dead.run_id, of_type=DagsterEventType.RUN_FAILURE).records
    assert "stopped beating" in failure.event_log_entry.message
    assert "its task can run again" in failure.event_log_entry.message
    assert set(leases.heartbeats()) == {live.run_id}
    assert leases.try_acquire(1, "next-run") is None, "the dead task run's shard lease is gone"


def test_a_task_run_that_never_beat_is_dead_after_the_start_up_grace():
    instance = DagsterInstance.ephemeral()
    task_run = add_task_run(instance, "task_echo", DagsterRunStatus.STARTING)
    tagged = instance.add_run(  # launched some other way (the UI), but carrying a task id
        DagsterRun(job_name="adhoc", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED, tags=task_run.tags)
    )
    instance.add_run(DagsterRun(job_name="adhoc", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED))
    assert find_dead_runs(instance, {}, utc_now() + timedelta(seconds=STARTUP_GRACE_SECONDS / 2)) == []
    dead = find_dead_runs(instance, {}, utc_now() + timedelta(seconds=STARTUP_GRACE_SECONDS + 5))
    assert {(run.run.run_id, run.shard) for run in dead} == {(task_run.run_id, None), (tagged.run_id, None)}
    assert all("never registered a heartbeat" in run.reason for run in dead)


def test_a_backfill_run_without_grace_tags_counts_as_in_flight():
    instance = DagsterInstance.ephemeral()
    add_run(instance, INGEST_JOB, 1, DagsterRunStatus.STARTING)
    assert run_in_flight(instance, INGEST_JOB, 1)
    assert not run_in_flight(instance, INGEST_JOB, 0)
    assert not run_in_flight(instance, REBUILD_JOB, 1)


def test_the_rendered_instance_limits_one_run_per_partition_and_ends_dead_cancels(tmp_path, write_manifest):
    manifest = load_manifest(write_manifest("sources: []\n"))
    render_instance(manifest, tmp_path / "home", tmp_path)
    instance = DagsterInstance.from_config(str(tmp_path / "home"))
    try:
        assert instance.run_monitoring_cancel_timeout_seconds == CANCEL_TIMEOUT_SECONDS
        limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
        assert {"key": PARTITION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    finally:
        instance.dispose()


def test_grace_dev_refuses_a_state_dir_another_one_holds(tmp_path, write_manifest, capsys):
    manifest = write_manifest("state_dir: state\nsources: []\n")
    state_dir = load_manifest(manifest).state_dir
    state_dir.mkdir()
    with open(state_dir / DEV_LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        assert main(["dev", "-c", str(manifest)]) == 2
    error = capsys.readouterr().err
    assert str(state_dir) in error and "pid 4242" in error
    assert not (state_dir / "dagster_home").exists(), "the running instance's files are left alone"


WORDS = (
    "river mountain glacier harbor orchard violin comet lantern meadow falcon quartz ember willow "
    "canyon beacon tundra coral saffron marble thistle prairie nebula cobalt juniper monsoon"
).split()
FILES = 300  # one ~200-token chunk each: 7-30 s of embedding on the real onnx-int8 model, busy or not


@pytest.mark.parametrize(
    ("signum", "backend"),
    # SIGKILL: the code server that spawned the worker sees it die and fails the run; the next run
    # takes the lease over at once. SIGSTOP: a hung worker nobody notices but its stopped heartbeat,
    # so only run_health frees the shard. One backend each keeps the pair near 3 minutes.
    [(signal.SIGKILL, "sqlite"), (signal.SIGSTOP, "postgresql")],
    ids=["sigkill-sqlite", "sigstop-postgresql"],
)
def test_a_dead_run_worker_frees_its_shard_and_its_work_is_finished(tmp_path, request, signum, backend):
    # PostgreSQL: the Dagster instance too, so run monitoring and the queue read runs from the server
    storage = "" if backend == "sqlite" else request.getfixturevalue("database_setting")
    manifest = tmp_path / "grace.yaml"
    manifest.write_text(
        f"state_dir: state\n{storage}"
        "sources:\n  - {name: documents, path: inbox/documents}\nindex: {shards: 1, trees: 10}\n"
    )
    home, inbox = tmp_path / "dagster_home", tmp_path / "inbox" / "documents"
    texts = _unique_texts(FILES)
    with DevServer(manifest, home, free_port(), tmp_path / "dagster-dev.log") as server:
        second = grace("dev", "-c", str(manifest), "--port", str(free_port()), cwd=tmp_path)
        assert second.returncode == 2
        assert str(tmp_path / "state") in second.stderr and f"pid {server.process.pid}" in second.stderr

        for index, text in enumerate(texts):
            (inbox / f"file-{index:03d}.txt").write_text(text)
        instance = DagsterInstance.from_config(str(home))
        # The deployment's own store: text is read with the KEK that grace dev created.
        resources = build_resources(load_manifest(manifest))
        store, model_id = resources["store"].get(), resources["embedder"].get().model_id
        try:
            victim, pid = wait_for(lambda: embedding_run(instance), timeout=120, every=0.5)
            time.sleep(1)  # into embedding, well before its end
            server.signal_member(pid, signum)
            signalled_at = time.monotonic()

            def victim_ended():
                return instance.get_run_by_id(victim).status == DagsterRunStatus.FAILURE

            wait_for(victim_ended, timeout=60, every=1)
            freed_after = time.monotonic() - signalled_at

            def every_file_searchable_and_a_later_run_succeeded():
                counts = store.documents.shard_counts(0, 1)
                embedded = not any(store.texts.chunks_to_embed(0, 1, model_id))
                searchable = counts["documents_active"] == FILES and embedded
                finished = instance.get_runs(
                    filters=RunsFilter(job_name=INGEST_JOB, statuses=[DagsterRunStatus.SUCCESS])
                )
                return searchable and finished

            [later, *_] = wait_for(every_file_searchable_and_a_later_run_succeeded, timeout=120, every=2)
            assert time.monotonic() - signalled_at < 120 and freed_after < 60
            assert later.run_id != victim
        finally:
            if signum == signal.SIGSTOP:
                server.signal_member(pid, signal.SIGKILL)  # a stopped process would sit out stop()'s SIGTERM
            store.dispose()
            instance.dispose()
        search = grace("search", texts[FILES // 2], "-k", "1", "--json", "-c", str(manifest), cwd=tmp_path)
        assert json.loads(search.stdout)[0]["path"] == f"file-{FILES // 2:03d}.txt"


def _unique_texts(count: int) -> list[str]:
    generator = random.Random(7)
    return [f"Record {index}. " + " ".join(generator.choice(WORDS) for _ in range(150)) for index in range(count)]

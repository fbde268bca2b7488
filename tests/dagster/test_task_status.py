"""The task_status sensor on a real Dagster instance: runs created and moved through their events carry
their tasks along every transition, retries keep a task in progress, a deleted run fails its task,
and sla_met and the times come from the run records."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    build_sensor_context,
)
from dagster._core.execution.plan.objects import StepSuccessData
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

from grace.core.manifest import load_manifest
from grace.core.names import TASK_ID_TAG
from grace.core.task_model import Task
from grace.resources.db.schema import utc_now
from grace.resources.store.store import Store
from grace.resources.store.taskbook import FAILED, QUEUED, RECEIVED, STARTED, SUCCEEDED
from grace.resources.wiring.dagster_resources import StoreResource
from grace.sensors import task_lifecycle
from grace.sensors.task_lifecycle import RETRY_WAIT, build_task_status_sensor, follow_runs

JOB_ORIGIN = RemoteJobOrigin(
    RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("grace"), "__repository__"), "task_search"
)
BASE = utc_now().replace(microsecond=0) - timedelta(minutes=10)


@pytest.fixture
def store(store_url):
    store = Store(store_url)
    yield store
    store.dispose()


@pytest.fixture
def instance():
    return DagsterInstance.ephemeral()


def add_task(store: Store, task_id: str, sla_ms: int = 5000) -> None:
    task = Task(task_id, "search", "cli", 0, sla_ms, {"query": "x"}, 13, "search")
    store.tasks.add(task, "cli", now=BASE)


def add_run(instance: DagsterInstance, task_id: str, tags=None) -> DagsterRun:
    """A run of the task, in the run queue as the router's request leaves it."""
    run = DagsterRun(
        job_name="task_search",
        run_id=str(uuid.uuid4()),
        status=DagsterRunStatus.NOT_STARTED,
        tags={TASK_ID_TAG: task_id, **(tags or {})},
        remote_job_origin=JOB_ORIGIN,  # Dagster requires it of every queued run
    )
    instance.add_run(run)
    report(instance, run, DagsterEventType.RUN_ENQUEUED, 0.5)
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.QUEUED
    return run


def report(instance: DagsterInstance, run: DagsterRun, kind: DagsterEventType, seconds_after_base: float) -> None:
    """A run event at BASE + seconds: the run records take their start and end times from it."""
    event = DagsterEvent(event_type_value=kind.value, job_name=run.job_name)
    instance.report_dagster_event(
        event, run.run_id, timestamp=(BASE + timedelta(seconds=seconds_after_base)).timestamp()
    )


def test_a_task_follows_its_run_through_every_transition(store, instance):
    add_task(store, "fast", sla_ms=5000)
    add_task(store, "slow", sla_ms=2000)
    assert follow_runs(instance, store.tasks) == {}, "no run yet: the tasks wait for route_tasks"

    fast, slow = add_run(instance, "fast"), add_run(instance, "slow")
    assert follow_runs(instance, store.tasks) == {(RECEIVED, QUEUED): 2}
    task = store.tasks.get("fast")
    created = instance.get_run_record_by_id(fast.run_id).create_timestamp
    assert (task.status, task.run_id, task.queued_at) == (QUEUED, fast.run_id, created)

    for run in (fast, slow):
        report(instance, run, DagsterEventType.RUN_START, 2)
    assert follow_runs(instance, store.tasks) == {(QUEUED, STARTED): 2}
    task = store.tasks.get("fast")
    assert task.started_at == BASE + timedelta(seconds=2) and task.queue_wait_ms == 2000

    for run in (fast, slow):
        report(instance, run, DagsterEventType.RUN_SUCCESS, 3)
    assert follow_runs(instance, store.tasks) == {(STARTED, SUCCEEDED): 2}
    fast_task, slow_task = store.tasks.get("fast"), store.tasks.get("slow")
    assert fast_task.finished_at == BASE + timedelta(seconds=3) and fast_task.run_ms == 1000
    assert fast_task.sla_met is True, "3000 ms against an SLA of 5000"
    assert slow_task.sla_met is False, "3000 ms against an SLA of 2000"
    assert store.tasks.sla_breaches() == {"cli": 1}
    assert follow_runs(instance, store.tasks) == {}, "ended tasks are left alone"


def test_a_task_whose_run_ended_between_ticks_gets_every_time_filled(store, instance):
    add_task(store, "jumper")
    run = add_run(instance, "jumper")
    report(instance, run, DagsterEventType.RUN_START, 1.5)
    report(instance, run, DagsterEventType.RUN_SUCCESS, 4)

    assert follow_runs(instance, store.tasks) == {(RECEIVED, SUCCEEDED): 1}

    task = store.tasks.get("jumper")
    assert task.queued_at is not None and task.started_at == BASE + timedelta(seconds=1.5)
    assert (task.queue_wait_ms, task.run_ms, task.sla_met, task.error) == (1500, 2500, True, None)


def test_failed_and_canceled_runs_fail_their_tasks_with_a_reason(store, instance):
    for task_id in ("died", "raised", "canceled"):
        add_task(store, task_id)
    died, raised, canceled = add_run(instance, "died"), add_run(instance, "raised"), add_run(instance, "canceled")
    for run in (died, raised):
        report(instance, run, DagsterEventType.RUN_START, 1)
    instance.report_run_failed(instance.get_run_by_id(died.run_id), "its worker was killed")
    store.tasks.record_outcome("raised", error="ValueError: no such shard")
    instance.report_run_failed(instance.get_run_by_id(raised.run_id), "step failed")
    instance.report_run_canceled(instance.get_run_by_id(canceled.run_id), "canceled in the queue")

    assert follow_runs(instance, store.tasks) == {(RECEIVED, FAILED): 3}

    died_task = store.tasks.get("died")
    assert died_task.error == f"run {died.run_id} ended FAILURE: its worker was killed"
    assert died_task.started_at == BASE + timedelta(seconds=1) and died_task.run_ms is not None
    assert store.tasks.get("raised").error == "ValueError: no such shard", "the handler's own error is kept"
    never_started = store.tasks.get("canceled")
    assert never_started.error.startswith(f"run {canceled.run_id} ended CANCELED")
    assert (never_started.started_at, never_started.run_ms, never_started.queue_wait_ms) == (None, None, None)
    assert never_started.finished_at is not None and never_started.sla_met is not None


def test_a_run_waiting_for_its_retry_keeps_the_task_in_progress_and_the_retry_decides(store, instance):
    add_task(store, "retried")
    first = add_run(instance, "retried")
    report(instance, first, DagsterEventType.RUN_START, 1)
    assert follow_runs(instance, store.tasks) == {(RECEIVED, STARTED): 1}
    instance.report_run_failed(instance.get_run_by_id(first.run_id), "worker died")
    instance.add_run_tags(first.run_id, {"dagster/will_retry": "true"})

    assert follow_runs(instance, store.tasks) == {}, "still started: its retry is coming"

    retry = add_run(instance, "retried", tags={"dagster/parent_run_id": first.run_id})
    assert follow_runs(instance, store.tasks) == {(STARTED, STARTED): 1}
    assert store.tasks.get("retried").run_id == retry.run_id, "the task follows its newest run"
    report(instance, retry, DagsterEventType.RUN_START, 5)
    report(instance, retry, DagsterEventType.RUN_SUCCESS, 6)

    assert follow_runs(instance, store.tasks) == {(STARTED, SUCCEEDED): 1}
    task = store.tasks.get("retried")
    assert task.started_at == BASE + timedelta(seconds=1), "started when its first run did"
    assert (task.run_ms, task.queue_wait_ms, task.error) == (5000, 1000, None)


def test_a_retry_that_never_comes_fails_the_task_after_the_wait(store, instance):
    add_task(store, "orphan")
    run = add_run(instance, "orphan")
    report(instance, run, DagsterEventType.RUN_START, 1)
    instance.report_run_failed(instance.get_run_by_id(run.run_id), "worker died")
    instance.add_run_tags(run.run_id, {"dagster/will_retry": "true"})
    assert follow_runs(instance, store.tasks) == {(RECEIVED, STARTED): 1}

    later = utc_now() + RETRY_WAIT + timedelta(seconds=1)
    assert follow_runs(instance, store.tasks, now=later) == {(STARTED, FAILED): 1}
    assert "worker died" in store.tasks.get("orphan").error


def test_a_run_killed_after_its_step_succeeded_ends_its_task_succeeded(store, instance):
    """Seen with kill -9 of `grace dev`: the handler finished and stored its result, the run was
    failed before RUN_SUCCESS, and Dagster refuses to retry a run with no failed step."""
    add_task(store, "finished", sla_ms=60_000)
    store.tasks.record_outcome("finished", result={"echo": "done"})
    run = add_run(instance, "finished")
    report(instance, run, DagsterEventType.RUN_START, 1)
    step_success = DagsterEvent(
        event_type_value=DagsterEventType.STEP_SUCCESS.value,
        job_name=run.job_name,
        step_key="run_task",
        event_specific_data=StepSuccessData(duration_ms=1000.0),
    )
    instance.report_dagster_event(step_success, run.run_id, timestamp=(BASE + timedelta(seconds=2)).timestamp())
    instance.report_run_failed(instance.get_run_by_id(run.run_id), "the run worker process is gone")

    assert follow_runs(instance, store.tasks) == {(RECEIVED, SUCCEEDED): 1}
    task = store.tasks.get("finished")
    assert (task.status, task.error, task.result) == (SUCCEEDED, None, '{"echo":"done"}')


def test_a_failed_run_not_yet_tagged_for_retry_keeps_its_task_open_while_retries_are_on(store):
    """Dagster stores a run's failure, then tags whether it will retry: a tick in between (seen
    under load, kill -9 of `grace dev`) once ended the task, and its retry then ran a failed task."""
    retrying = DagsterInstance.ephemeral(settings={"run_retries": {"enabled": True, "max_retries": 2}})
    add_task(store, "between")
    failed = DagsterRun(
        job_name="task_search",
        run_id=str(uuid.uuid4()),
        status=DagsterRunStatus.FAILURE,
        tags={TASK_ID_TAG: "between"},
        remote_job_origin=JOB_ORIGIN,
    )
    retrying.add_run(failed)  # the state between the two writes: failed, no will_retry tag yet
    assert follow_runs(retrying, store.tasks) == {(RECEIVED, QUEUED): 1}, "its retry is about to be decided"

    retrying.add_run_tags(failed.run_id, {"dagster/will_retry": "false"})
    assert follow_runs(retrying, store.tasks) == {(QUEUED, FAILED): 1}, "no retry: the task ends"

    add_task(store, "untagged")
    without_retries = DagsterInstance.ephemeral()
    without_retries.add_run(failed._replace(run_id=str(uuid.uuid4()), tags={TASK_ID_TAG: "untagged"}))
    assert follow_runs(without_retries, store.tasks) == {(RECEIVED, FAILED): 1}, "retries off: nothing to wait for"


@pytest.mark.parametrize("run_started", [False, True])
def test_a_task_whose_run_was_deleted_fails_instead_of_waiting_forever(store, instance, run_started):
    add_task(store, "lost")
    run = add_run(instance, "lost")
    if run_started:
        report(instance, run, DagsterEventType.RUN_START, 1)
    follow_runs(instance, store.tasks)
    before = store.tasks.get("lost").status

    instance.delete_run(run.run_id)

    assert follow_runs(instance, store.tasks) == {(before, FAILED): 1}
    task = store.tasks.get("lost")
    assert task.error == f"its run {run.run_id} was deleted from the Dagster instance; submit it again"
    assert task.finished_at is not None


def test_open_tasks_are_looked_up_in_batches(store, instance, monkeypatch):
    monkeypatch.setattr(task_lifecycle, "RUN_LOOKUP_BATCH", 2)
    for number in range(5):
        add_task(store, f"t{number}")
        add_run(instance, f"t{number}")

    assert follow_runs(instance, store.tasks) == {(RECEIVED, QUEUED): 5}


def test_the_sensor_is_accepted_without_a_target_and_reports_its_moves(store, store_url, instance, write_manifest):
    manifest = load_manifest(write_manifest("sources: []\n"))
    defs = Definitions(sensors=[build_task_status_sensor(manifest)])
    sensor = defs.resolve_sensor_def("task_status")
    add_task(store, "watched")
    add_run(instance, "watched")
    with build_sensor_context(instance=instance, resources={"store": StoreResource(url=store_url)}) as context:
        result = sensor(context)

    assert not result.run_requests and result.skip_reason.skip_message == "moved 1 received->queued"
    assert store.tasks.get("watched").status == QUEUED

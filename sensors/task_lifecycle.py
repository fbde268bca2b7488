"""The task_status sensor: each open task follows its newest run in Dagster's run records.

received -> queued -> started -> succeeded | failed, with the times, queue wait, run time and
whether the SLA was met, all read from the run records: nothing is counted by hand. A task whose
run was deleted is failed, so no task waits forever for a run that no longer exists.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRecord,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster._core.storage.tags import WILL_RETRY_TAG

from grace.core.manifest import Manifest
from grace.core.names import TASK_ID_TAG
from grace.resources.db.schema import as_utc, utc_now
from grace.resources.store.taskbook import (
    FAILED,
    OPEN_STATUSES,
    QUEUED,
    RECEIVED,
    STARTED,
    SUCCEEDED,
    TaskBook,
    TaskRecord,
    milliseconds,
)
from grace.resources.wiring.dagster_resources import StoreResource
from grace.sensors.folder import TICK_SECONDS

# Open tasks read per tick (oldest first), and task ids per run-records query.
OPEN_TASKS_PER_TICK = 5000
RUN_LOOKUP_BATCH = 500
# A failed run marked for automatic retry is given this long for its retry to appear.
RETRY_WAIT = timedelta(minutes=5)

STAGE = {RECEIVED: 0, QUEUED: 1, STARTED: 2, SUCCEEDED: 3, FAILED: 3}
WAITING_RUN = {DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.MANAGED}
RUNNING_RUN = {DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING}
ENDED_RUN = {DagsterRunStatus.SUCCESS: SUCCEEDED, DagsterRunStatus.FAILURE: FAILED, DagsterRunStatus.CANCELED: FAILED}


def build_task_status_sensor(manifest: Manifest) -> SensorDefinition:
    """Moves open tasks along from their runs' records; it requests no runs."""

    @sensor(
        name="task_status",
        minimum_interval_seconds=TICK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description="Keeps each routed task's status, times and SLA outcome current from its Dagster run.",
    )
    def task_status(context: SensorEvaluationContext, store: StoreResource):
        moves = follow_runs(context.instance, store.get().tasks)
        for (before, after), count in sorted(moves.items()):
            context.log.info(f"{count} task(s) {before} -> {after}")
        summary = ", ".join(f"{count} {before}->{after}" for (before, after), count in sorted(moves.items()))
        return SensorResult(skip_reason=f"moved {summary}" if moves else "no task changed")

    return task_status


def follow_runs(instance: DagsterInstance, book: TaskBook, now: datetime | None = None) -> Counter:
    """Apply what the run records say to every open task; counts the moves by (before, after) status."""
    now = now or utc_now()
    moves: Counter = Counter()
    open_tasks = book.with_status(OPEN_STATUSES, limit=OPEN_TASKS_PER_TICK)
    for start in range(0, len(open_tasks), RUN_LOOKUP_BATCH):
        batch = open_tasks[start : start + RUN_LOOKUP_BATCH]
        runs = runs_by_task(instance, [record.task_id for record in batch])
        for record in batch:
            change = next_state(instance, record, runs.get(record.task_id, []), now)
            # Compare-and-set: a tick that lost the race to another leaves the task to it.
            if change is not None and book.move(record.task_id, record.status, **change):
                moves[(record.status, change.get("status", record.status))] += 1
    return moves


def runs_by_task(instance: DagsterInstance, task_ids: list[str]) -> dict[str, list[RunRecord]]:
    """Each task's runs, oldest first (retries come after the run they retry)."""
    found: dict[str, list[RunRecord]] = defaultdict(list)
    for run_record in instance.get_run_records(RunsFilter(tags={TASK_ID_TAG: task_ids})):
        found[run_record.dagster_run.tags[TASK_ID_TAG]].append(run_record)
    for records in found.values():
        records.sort(key=lambda run_record: run_record.create_timestamp)
    return found


def next_state(
    instance: DagsterInstance, record: TaskRecord, runs: list[RunRecord], now: datetime
) -> dict[str, Any] | None:
    """The columns to change on a task so that it agrees with its runs, or None if it already does."""
    if not runs:
        if record.status == RECEIVED:
            return None  # route_tasks has not requested its run yet
        return _ended(
            record,
            FAILED,
            now,
            error=f"its run {record.run_id} was deleted from the Dagster instance; submit it again",
        )
    newest = runs[-1]
    run = newest.dagster_run
    target = _target_status(newest, now, instance.run_retries_enabled)
    if target is None:
        return None
    if target == FAILED and run.status == DagsterRunStatus.FAILURE and _step_succeeded(instance, run.run_id):
        # Killed between its step's success and the run's: the handler ran to its end and its result is
        # stored. Dagster will not retry it (no step failed), and running it again would run it twice.
        target = SUCCEEDED
    changes: dict[str, Any] = {}
    if STAGE[target] < STAGE[record.status]:
        target = record.status  # a retry queued after its run started: the task keeps its stage
    if target != record.status:
        changes["status"] = target
    if run.run_id != record.run_id:
        changes["run_id"] = run.run_id
    if STAGE[target] >= STAGE[QUEUED] and record.queued_at is None:
        changes["queued_at"] = as_utc(runs[0].create_timestamp)
    started_at = record.started_at
    if STAGE[target] >= STAGE[STARTED] and started_at is None:
        first_start = next((run_record.start_time for run_record in runs if run_record.start_time), None)
        if first_start is not None:
            started_at = datetime.fromtimestamp(first_start, UTC)
        elif target == STARTED:
            started_at = now  # STARTING: its start time is not recorded yet
        if started_at is not None:
            changes["started_at"] = started_at
            changes["queue_wait_ms"] = milliseconds(started_at, record.received_at)
    if target in (SUCCEEDED, FAILED):
        error = None if target == SUCCEEDED or record.error else _run_error(instance, newest)
        finished_at = datetime.fromtimestamp(newest.end_time, UTC) if newest.end_time else now
        changes.update(_ended(record, target, finished_at, error=error, started_at=started_at))
    return changes or None


def _target_status(newest: RunRecord, now: datetime, retries_enabled: bool) -> str | None:
    """The task status its newest run stands for; a failed run about to be retried counts as in progress."""
    status = newest.dagster_run.status
    if status in WAITING_RUN:
        return QUEUED
    if status in RUNNING_RUN:
        return STARTED
    if _may_be_retried(newest.dagster_run, retries_enabled):
        ended_at = datetime.fromtimestamp(newest.end_time, UTC) if newest.end_time else as_utc(newest.update_timestamp)
        if now - ended_at < RETRY_WAIT:
            return STARTED if newest.start_time else QUEUED
    return ENDED_RUN.get(status)


def _may_be_retried(run: DagsterRun, retries_enabled: bool) -> bool:
    """Dagster writes a run's failure first and tags whether it will retry a moment later; a tick
    that reads between the two must not end the task whose retry is about to run."""
    if run.is_complete_and_waiting_to_retry:
        return True
    return retries_enabled and run.status == DagsterRunStatus.FAILURE and WILL_RETRY_TAG not in run.tags


def _ended(
    record: TaskRecord, status: str, finished_at: datetime, error: str | None, started_at: datetime | None = None
) -> dict[str, Any]:
    """Columns of a task that ended: its times, run time and whether it met its SLA."""
    changes: dict[str, Any] = {
        "status": status,
        "finished_at": finished_at,
        "sla_met": milliseconds(finished_at, record.received_at) <= record.sla_ms,
    }
    if started_at is not None:
        changes["run_ms"] = milliseconds(finished_at, started_at)
    if error is not None:
        changes["error"] = error
    return changes


def _step_succeeded(instance: DagsterInstance, run_id: str) -> bool:
    """Whether the run's one step (the task op) finished with success."""
    return bool(instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_SUCCESS, limit=1).records)


def _run_error(instance: DagsterInstance, run_record: RunRecord) -> str:
    """Why a run ended without success, as its own failure event says when it says anything."""
    run = run_record.dagster_run
    error = f"run {run.run_id} ended {run.status.value}"
    failures = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.RUN_FAILURE, ascending=False, limit=1
    ).records
    message = failures[0].event_log_entry.dagster_event.message if failures else None
    return f"{error}: {message}" if message else error

"""The route_tasks sensor: task files become received tasks, and received tasks become runs of their
handler's job, tagged so that Dagster's run queue applies grace.yaml's capacity, quotas and priority."""

from __future__ import annotations

from collections.abc import Sequence

from dagster import (
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from grace.core.manifest import Manifest
from grace.core.names import task_job_name
from grace.core.routing_config import instance_drift
from grace.core.task_model import task_run_config, task_run_tags
from grace.resources.db.schema import utc_now
from grace.resources.store.taskbook import FAILED, RECEIVED, TaskRecord
from grace.resources.tasks.inbox import TaskInbox
from grace.resources.wiring.dagster_resources import StoreResource
from grace.sensors.folder import TICK_SECONDS

# Bounds one tick; the daemon's run key check costs a query per request.
ROUTE_BATCH = 500


class RunQueueDrift(Exception):
    """The Dagster instance's run queue does not enforce grace.yaml's routing limits."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "no task is routed while the Dagster instance's run queue differs from grace.yaml's routing: "
            + "; ".join(problems)
            + ". Start Grace with `grace dev`, which renders the instance from grace.yaml."
        )


def build_router_sensor(manifest: Manifest, task_jobs: Sequence[JobDefinition]) -> SensorDefinition:
    """Take the inbox's task files, then request one run per received task, keyed by its id.

    The run key is the task id, so a task requested again before task_status has seen its run
    (or after a restart) is skipped by the daemon instead of run twice.
    """
    job_names = {job.name for job in task_jobs}

    @sensor(
        name="route_tasks",
        jobs=list(task_jobs),
        minimum_interval_seconds=TICK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Takes task files from {manifest.routing.inbox} and requests a run for each received task.",
    )
    def route_tasks(context: SensorEvaluationContext, store: StoreResource):
        book = store.get().tasks
        intake = TaskInbox(manifest, book).intake()
        for name, reason in intake.rejected:
            context.log.warning(f"task file {name} rejected (see {manifest.routing.inbox}/rejected/): {reason}")
        for name, reason in intake.deferred:
            context.log.error(f"task file {name} left for the next tick: {reason}")
        if intake.accepted:
            context.log.info(f"{len(intake.accepted)} task(s) received from {manifest.routing.inbox}")
        # Checked after the intake, so files are still accepted; no run is requested that the queue would not limit.
        drift = instance_drift(context.instance, manifest.routing)
        if drift:
            for line in drift:
                context.log.error(f"run queue differs from grace.yaml: {line}")
            raise RunQueueDrift(drift)
        requests = []
        for record in book.with_status([RECEIVED], limit=ROUTE_BATCH):
            problem = unroutable(record, manifest, job_names)
            if problem is None:
                requests.append(run_request(record, manifest))
            elif book.move(record.task_id, RECEIVED, status=FAILED, finished_at=utc_now(), error=problem):
                context.log.warning(f"task {record.task_id} failed: {problem}")
        skip = None if requests else "no received task to route"
        return SensorResult(run_requests=requests, skip_reason=skip)

    return route_tasks


def run_request(record: TaskRecord, manifest: Manifest) -> RunRequest:
    """The run of a received task: its handler's job, the task id as config and run key, and every routing tag."""
    return RunRequest(
        run_key=record.task_id,
        job_name=task_job_name(record.handler),
        run_config=task_run_config(record.task_id),
        tags=task_run_tags(record.task(), manifest.routing.origins),
    )


def unroutable(record: TaskRecord, manifest: Manifest, job_names: set[str]) -> str | None:
    """Why a received task can no longer run (grace.yaml changed since it was accepted), or None."""
    if record.type not in manifest.routing.routes:
        return (
            f"task type {record.type!r} is no longer routed in grace.yaml (routes: "
            f"{', '.join(sorted(manifest.routing.routes))}); route it again and resubmit the task"
        )
    if task_job_name(record.handler) not in job_names:
        return (
            f"its handler {record.handler!r} has no job any more (grace.yaml routes {record.type!r} to "
            f"{manifest.routing.routes[record.type]!r}); resubmit the task"
        )
    return None

"""Dead runs free their shard: a run whose heartbeat stopped is failed, its leases are freed,
and its shard's ingest is requested again on the same tick. A dead task run is failed too, and
the instance's run retries run its task again.

Run monitoring fails a run whose worker process is gone (grace.deploy.launcher checks each worker's
pid every poll, 10 s); once that run's heartbeat is stale, this sensor frees its rows and
requests its shard again. A worker that hangs (stopped, deadlocked) is seen by no one: its run
would stay STARTED, holding its place in the run queue's per-shard limit, until run
monitoring's max runtime. Each shard run's lease resource, and each task run's heartbeat
resource, beats every RENEW_SECONDS; this sensor ends the runs that stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from grace.core.names import (
    INGEST_JOB,
    PARTITION_TAG,
    REASON_TAG,
    REBUILD_JOB,
    SHARD_TAG,
    TASK_ID_TAG,
    TASK_JOB_PREFIX,
)
from grace.resources.db.schema import utc_now
from grace.resources.runs.lease import HEARTBEAT_TTL_SECONDS, Heartbeat, ShardLeases
from grace.resources.wiring.dagster_resources import StoreResource
from grace.sensors.folder import TICK_SECONDS
from grace.sensors.run_records import run_in_flight

# A run worker imports Dagster and loads the code location (5-15 s on a busy 2-core machine)
# before its lease resource registers the first heartbeat; 40 s covers that with room to spare.
# Measured from the run's newest event, so a run between its last step and RUN_SUCCESS
# (heartbeat already deleted) is never taken for dead.
STARTUP_GRACE_SECONDS = 40.0
# Worst case to free a dead run's shard: HEARTBEAT_TTL_SECONDS (25) + one sensor loop
# (5-10 s) = 35 s, then the re-requested run queues and starts (~5 s): inside 60 s.

WATCHED_STATUSES = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
SHARD_JOBS = (INGEST_JOB, REBUILD_JOB)


@dataclass(frozen=True)
class DeadRun:
    run: DagsterRun
    shard: int | None
    reason: str


def find_dead_runs(
    instance: DagsterInstance,
    heartbeats: dict[str, Heartbeat],
    now: datetime,
    heartbeat_ttl_seconds: float = HEARTBEAT_TTL_SECONDS,
) -> list[DeadRun]:
    """Running or canceling runs that hold or wait for a shard, or run a task, and stopped beating.

    Grace's shard and task jobs are watched from their start; any other run (a UI
    materialization of the shard assets) once it has registered a heartbeat.
    """
    dead = []
    for record in instance.get_run_records(RunsFilter(statuses=WATCHED_STATUSES)):
        run = record.dagster_run
        beat = heartbeats.get(run.run_id)
        if beat is not None:
            silent = (now - beat.beat_at).total_seconds()
            if silent <= heartbeat_ttl_seconds:
                continue
            reason = f"its run worker stopped beating {silent:.0f}s ago (limit {heartbeat_ttl_seconds:.0f}s)"
        elif run.job_name in SHARD_JOBS or is_task_run(run):
            silent = now.timestamp() - _last_sign_of_life(instance, run.run_id, record.update_timestamp.timestamp())
            if silent <= STARTUP_GRACE_SECONDS:
                continue
            reason = f"its run worker never registered a heartbeat and has been silent for {silent:.0f}s"
        else:
            continue
        # A task run holds no shard of its own (a reindex task's leases are freed with the run).
        shard = None if is_task_run(run) else beat.shard if beat is not None else _partition_shard(run)
        dead.append(DeadRun(run, shard, reason))
    return dead


def is_task_run(run: DagsterRun) -> bool:
    return run.job_name.startswith(TASK_JOB_PREFIX) or TASK_ID_TAG in run.tags


def ended_run_beats(
    instance: DagsterInstance,
    heartbeats: dict[str, Heartbeat],
    now: datetime,
    heartbeat_ttl_seconds: float = HEARTBEAT_TTL_SECONDS,
) -> list[str]:
    """Run ids whose heartbeat went stale although no run of theirs is running: Dagster already ended
    the run (its code server saw the worker die, or run monitoring gave up) or never knew it."""
    stale = [
        run_id for run_id, beat in heartbeats.items() if (now - beat.beat_at).total_seconds() > heartbeat_ttl_seconds
    ]
    if not stale:
        return []
    running = {run.run_id for run in instance.get_runs(RunsFilter(run_ids=stale, statuses=WATCHED_STATUSES))}
    return [run_id for run_id in stale if run_id not in running]


def reap(instance: DagsterInstance, leases: ShardLeases, dead: DeadRun) -> int:
    """End a dead run in the instance and free its leases; returns how many leases were freed."""
    then = "its task can run again (run retries)" if is_task_run(dead.run) else "its shard can run again"
    message = f"Grace run_health: {dead.reason}; the run is ended so {then}"
    if dead.run.status == DagsterRunStatus.CANCELING:
        instance.report_run_canceled(dead.run, message)
    else:
        instance.report_run_failed(dead.run, message)
    return leases.release_run(dead.run.run_id)


def build_run_health_sensor(heartbeat_ttl_seconds: float = HEARTBEAT_TTL_SECONDS) -> SensorDefinition:
    """heartbeat_ttl_seconds: how long a run may go without beating; shorter only where runs beat faster
    or none runs (the crash tests' restarted daemon, whose dead runs' workers are known to be gone)."""

    @sensor(
        name="run_health",
        job_name=INGEST_JOB,
        minimum_interval_seconds=TICK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Fails runs whose heartbeat is older than {heartbeat_ttl_seconds:.0f}s (a killed run worker), "
        "frees their shards and requests their ingest again; index_freshness re-requests rebuilds, and "
        "the instance's run retries rerun dead task runs.",
    )
    def run_health(context: SensorEvaluationContext, store: StoreResource):
        leases, now = ShardLeases(store.get().engine), utc_now()
        heartbeats = leases.heartbeats()
        requests: dict[int, RunRequest] = {}
        for run_id in ended_run_beats(context.instance, heartbeats, now, heartbeat_ttl_seconds):
            # Dagster ended the run (run monitoring saw its worker die). Its retry, when one is made, runs
            # the work again; an ingest run's shard is requested here as well unless a run already has it.
            freed = leases.release_run(run_id)
            context.log.info(f"run {run_id} has ended: {freed} lease(s) and its heartbeat freed")
            ended = DeadRun(context.instance.get_run_by_id(run_id), heartbeats[run_id].shard, "its worker died")
            if ended.run is not None and ended.shard is not None and ended.run.job_name == INGEST_JOB:
                if not run_in_flight(context.instance, INGEST_JOB, ended.shard):
                    requests[ended.shard] = RunRequest(partition_key=str(ended.shard), tags=_retry_tags(ended))
        for dead in find_dead_runs(context.instance, heartbeats, now, heartbeat_ttl_seconds):
            freed = reap(context.instance, leases, dead)
            context.log.warning(
                f"run {dead.run.run_id} ({dead.run.job_name}, shard {dead.shard}) ended: {dead.reason}; "
                f"{freed} lease(s) freed"
            )
            if dead.shard is not None and dead.run.job_name != REBUILD_JOB:
                requests[dead.shard] = RunRequest(partition_key=str(dead.shard), tags=_retry_tags(dead))
        skip = None if requests else "every running shard run is beating"
        return SensorResult(run_requests=list(requests.values()), skip_reason=skip)

    return run_health


def _last_sign_of_life(instance: DagsterInstance, run_id: str, status_changed_at: float) -> float:
    """Epoch seconds of the run's newest event, or of its last status change if newer."""
    newest = instance.get_records_for_run(run_id, limit=1, ascending=False).records
    return max([status_changed_at] + [record.event_log_entry.timestamp for record in newest])


def _partition_shard(run: DagsterRun) -> int | None:
    partition = run.tags.get(PARTITION_TAG)
    return int(partition) if partition is not None and partition.isdigit() else None


def _retry_tags(dead: DeadRun) -> dict[str, str]:
    """The dead run's Grace tags (origin, source), its shard, and why this run exists."""
    grace_tags = {key: value for key, value in dead.run.tags.items() if key.startswith("grace/") and key != REASON_TAG}
    return {**grace_tags, SHARD_TAG: str(dead.shard), REASON_TAG: f"run {dead.run.run_id} died"}

"""Routing stats in the seed's shape, per origin: counted from the instance's runs and the task rows.

Nothing is counted by hand: running and queued runs come from Dagster's run storage (by the
grace/origin tag), waits, breaches and outcomes from the tasks table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from grace.core.names import ORIGIN_TAG
from grace.core.routing_config import RoutingConfig, instance_drift
from grace.resources.db.schema import utc_now
from grace.resources.store.taskbook import FAILED, SUCCEEDED, TaskBook, TaskRecord

WINDOW_SECONDS = 3600
RUNNING_STATUSES = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
WAITING_STATUSES = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED]


def routing_stats(
    instance: DagsterInstance, book: TaskBook, routing: RoutingConfig, now: datetime | None = None
) -> dict:
    """Capacity, runs in flight, drift from grace.yaml, and per origin: load, quota, waits and SLA breaches.

    Origins are grace.yaml's, plus any origin with runs in flight or tasks in the window.
    """
    now = now or utc_now()
    window = book.since(now - timedelta(seconds=WINDOW_SECONDS))
    breaches = book.sla_breaches()
    counted = {origin: _run_counts(instance, origin) for origin in _origins_with_runs(instance)}
    in_flight = {origin: counts for origin, counts in counted.items() if counts is not None}
    origins = sorted({*routing.origins, *(task.origin for task in window), *in_flight})
    per_origin = {}
    for origin in origins:
        running, queued = in_flight.get(origin, (0, 0))
        quota = routing.quota_of(origin)
        tasks = [task for task in window if task.origin == origin]
        waits = sorted(task.queue_wait_ms for task in tasks if task.queue_wait_ms is not None)
        per_origin[origin] = {
            "quota": quota,
            "current_count": running,
            "queued": queued,
            "quota_used": f"{running}/{quota}",
            "utilization": round(running / quota, 2),
            "sla_breaches": breaches.get(origin, 0),
            "queue_wait_p50_ms": nearest_rank(waits, 50),
            "queue_wait_p95_ms": nearest_rank(waits, 95),
            "succeeded": _count(tasks, SUCCEEDED),
            "failed": _count(tasks, FAILED),
        }
    return {
        "capacity": routing.capacity,
        "running": instance.get_runs_count(RunsFilter(statuses=RUNNING_STATUSES)),
        "queued": instance.get_runs_count(RunsFilter(statuses=WAITING_STATUSES)),
        "instance_drift": instance_drift(instance, routing),
        "window_seconds": WINDOW_SECONDS,
        "origins": per_origin,
    }


def nearest_rank(sorted_values: Sequence[int], percent: float) -> int | None:
    """The nearest-rank percentile of ascending values: the smallest value with percent% at or below it."""
    if not sorted_values:
        return None
    return sorted_values[max(1, math.ceil(percent / 100 * len(sorted_values))) - 1]


def _origins_with_runs(instance: DagsterInstance) -> set[str]:
    # Every origin value ever tagged (a handful); counting each is one indexed query, where reading
    # the in-flight runs themselves would deserialize a whole backed-up queue.
    return {value for _key, values in instance.get_run_tags(tag_keys=[ORIGIN_TAG]) for value in values}


def _run_counts(instance: DagsterInstance, origin: str) -> tuple[int, int] | None:
    """(running, queued) runs of the origin; None when it has none in flight."""
    tags = {ORIGIN_TAG: origin}
    running = instance.get_runs_count(RunsFilter(statuses=RUNNING_STATUSES, tags=tags))
    queued = instance.get_runs_count(RunsFilter(statuses=WAITING_STATUSES, tags=tags))
    return (running, queued) if running or queued else None


def _count(tasks: list[TaskRecord], status: str) -> int:
    return sum(1 for task in tasks if task.status == status)

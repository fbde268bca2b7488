"""One schedule shape for the jobs that run on a grace.yaml cron: UTC, on by default, one run per tick."""

from __future__ import annotations

from dagster import (
    DefaultScheduleStatus,
    JobDefinition,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    schedule,
)


def utc_cron_schedule(
    name: str, job: JobDefinition, cron: str, description: str, tags: dict[str, str] | None = None
) -> ScheduleDefinition:
    """A schedule that requests one run of job per tick of cron (UTC), keyed by the tick's time."""

    @schedule(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=description,
    )
    def on_cron(context: ScheduleEvaluationContext) -> RunRequest:
        return RunRequest(run_key=context.scheduled_execution_time.isoformat(), tags=tags or {})

    return on_cron

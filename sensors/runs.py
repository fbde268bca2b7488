"""What the Dagster instance says about Grace's runs."""

from grace.core.names import SHARD_TAG
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def run_in_flight(instance: DagsterInstance, job_name: str, shard: int) -> bool:
    """Whether a run of the job for the shard is queued or running."""
    runs = instance.get_runs(
        filters=RunsFilter(job_name=job_name, statuses=IN_FLIGHT, tags={SHARD_TAG: str(shard)}), limit=1
    )
    return bool(runs)

"""What the Dagster instance says about Grace's runs."""

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from grace.core.names import PARTITION_TAG

IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def run_in_flight(instance: DagsterInstance, job_name: str, shard: int) -> bool:
    """Whether a run of the job for the shard is queued or running, whoever launched it.

    Keyed on dagster/partition, which backfills and UI launches carry too (grace/shard they lack).
    """
    runs = instance.get_runs(
        filters=RunsFilter(job_name=job_name, statuses=IN_FLIGHT, tags={PARTITION_TAG: str(shard)}), limit=1
    )
    return bool(runs)

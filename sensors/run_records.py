"""What the Dagster instance says about Grace's runs."""

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from grace.core.names import PARTITION_TAG

WAITING = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED]  # not started: it reads what is recorded now
IN_FLIGHT = [*WAITING, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def run_in_flight(
    instance: DagsterInstance, job_name: str, shard: int, statuses: list[DagsterRunStatus] = IN_FLIGHT
) -> bool:
    """Whether a run of the job for the shard is in one of statuses (queued or running), whoever launched it.

    Keyed on dagster/partition, which backfills and UI launches carry too (grace/shard they lack).
    statuses=WAITING: only a run that has not started yet, so that it will see every change recorded now.
    """
    runs = instance.get_runs(
        filters=RunsFilter(job_name=job_name, statuses=statuses, tags={PARTITION_TAG: str(shard)}), limit=1
    )
    return bool(runs)

"""routing_stats: the router's per-origin load, waits and SLA breaches, recorded as numeric metadata on a schedule."""

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    ExecutorDefinition,
    JobDefinition,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    define_asset_job,
    multi_asset,
)

from grace.core.manifest import Manifest
from grace.core.names import ROUTING_ORIGIN, ROUTING_STATS_JOB, origin_tags
from grace.pipelines.cron import utc_cron_schedule
from grace.resources.tasks.routing_report import routing_stats
from grace.resources.wiring.dagster_resources import StoreResource

PER_ORIGIN_KEYS = (
    "utilization",
    "current_count",
    "queued",
    "sla_breaches",
    "queue_wait_p50_ms",
    "queue_wait_p95_ms",
)


def build_routing_stats_asset(manifest: Manifest) -> AssetsDefinition:
    @multi_asset(
        # The op needs a name of its own: the job is called routing_stats too, and Dagster wants
        # op and graph names unique within a code location.
        name="record_routing_stats",
        specs=[
            AssetSpec(
                "routing_stats",
                group_name="routing",
                owners=manifest.owners,
                kinds={"dagster"},
                description="Per origin (grace/origin tag): runs in flight against its quota (<origin>/utilization, "
                "<origin>/current_count), queued runs, SLA breaches and p50/p95 queue wait over the last hour, from "
                "the instance's runs and the tasks table; plotted over time, one point per routing.stats_cron tick.",
            )
        ],
    )
    def routing_stats_asset(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
        stats = routing_stats(context.instance, store.get().tasks, manifest.routing)
        for problem in stats["instance_drift"]:
            context.log.error(f"the Dagster instance does not enforce grace.yaml's routing: {problem}")
        return MaterializeResult(metadata=stats_metadata(stats))

    return routing_stats_asset


def stats_metadata(stats: dict) -> dict:
    """Numeric metadata, so the UI plots each value over time; "<origin>/<value>" per origin."""
    metadata = {
        "running": MetadataValue.int(stats["running"]),
        "queued": MetadataValue.int(stats["queued"]),
        "capacity": MetadataValue.int(stats["capacity"]),
        "instance_drift": MetadataValue.int(len(stats["instance_drift"])),
    }
    for origin, values in stats["origins"].items():
        for key in PER_ORIGIN_KEYS:
            value = values[key]
            if value is None:  # no waits measured yet: no point rather than a false zero
                continue
            metadata[f"{origin}/{key}"] = (
                MetadataValue.float(value) if isinstance(value, float) else MetadataValue.int(value)
            )
    return metadata


def build_routing_stats_job(stats_asset: AssetsDefinition, executor: ExecutorDefinition) -> JobDefinition:
    return define_asset_job(
        ROUTING_STATS_JOB,
        selection=[stats_asset],
        executor_def=executor,
        description="Records the router's per-origin stats on the routing_stats asset.",
    )


def build_routing_stats_schedule(manifest: Manifest, stats_job: JobDefinition) -> ScheduleDefinition:
    return utc_cron_schedule(
        "routing_stats_schedule",
        stats_job,
        manifest.routing.stats_cron,
        "Materializes routing_stats on routing.stats_cron.",
        tags=origin_tags(ROUTING_ORIGIN, manifest.routing.origins),
    )

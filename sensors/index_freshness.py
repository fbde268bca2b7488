"""Rebuild a shard's index once too much of it is stale."""

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from grace.core.manifest import Manifest
from grace.core.names import INGEST_JOB, REBUILD_JOB, rebuild_tags
from grace.resources.bindings import EmbedderResource, StoreResource, VectorIndexResource
from grace.resources.shard_status import inline_refusal, shard_views
from grace.sensors.folder import TICK_SECONDS
from grace.sensors.runs import run_in_flight


def build_freshness_sensor(manifest: Manifest) -> SensorDefinition:
    rebuild = manifest.index.rebuild
    threshold = rebuild.when_stale_fraction

    @sensor(
        name="index_freshness",
        job_name=REBUILD_JOB,
        minimum_interval_seconds=TICK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Requests a shard rebuild when pending + tombstoned vectors pass {threshold:.0%}.",
    )
    def index_freshness(
        context: SensorEvaluationContext,
        store: StoreResource,
        embedder: EmbedderResource,
        vector_index: VectorIndexResource,
    ):
        grace_store, index = store.get(), vector_index.get()
        model_id = grace_store.serving_model(embedder.get().model_id)  # the old model's, while re-embedding
        requests = []
        for view in shard_views(grace_store, index, model_id):
            fraction = view.stale_fraction
            # Damaged index files are rebuilt even when the shard holds nothing searchable.
            due = fraction >= threshold or view.index_problem is not None
            if not due or run_in_flight(context.instance, REBUILD_JOB, view.shard):
                continue
            inline = inline_refusal(view, rebuild.inline_max_delta, rebuild.inline_max_vectors) is None
            if inline and run_in_flight(context.instance, INGEST_JOB, view.shard):
                continue  # the ingest run indexes this delta itself before it ends
            reason = "index files damaged" if view.index_problem else f"stale fraction {fraction:.3f}"
            requests.append(
                RunRequest(
                    partition_key=str(view.shard), tags=rebuild_tags(view.shard, reason, manifest.routing.origins)
                )
            )
        return requests or SkipReason(f"every shard is under {threshold:.0%} stale or already rebuilding")

    return index_freshness

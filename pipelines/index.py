"""vector_index: one Annoy index per shard, rebuilt from the store and swapped in atomically."""

from collections.abc import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetsDefinition,
    DefaultScheduleStatus,
    JobDefinition,
    MaterializeResult,
    PartitionsDefinition,
    RunRequest,
    ScheduleDefinition,
    asset,
    asset_check,
    schedule,
)

from grace.core.manifest import Manifest
from grace.core.names import INGEST_JOB, rebuild_tags
from grace.resources.bindings import EmbedderResource, StoreResource, VectorIndexResource
from grace.resources.consistency import check_shard
from grace.resources.lease import ShardLeaseResource, lease_resource_defs
from grace.resources.shard_status import ShardView, inline_refusal, rebuild_shard, shard_view

COVERAGE_CHECK = "index_covers_every_embedding"
CONSISTENCY_CHECK = "index_matches_store"


def build_index_asset(
    manifest: Manifest, shards: PartitionsDefinition, embeddings_asset: AssetsDefinition
) -> AssetsDefinition:
    rebuild = manifest.index.rebuild

    @asset(
        partitions_def=shards,
        deps=[embeddings_asset],
        resource_defs=lease_resource_defs(manifest.store_url),
        group_name="index",
        kinds={"annoy"},
        output_required=False,
        description=f"Annoy index per shard ({manifest.index.trees} trees), built into a new file and swapped "
        "in atomically; searches scan newer embeddings exactly until the next build. An ingest run builds it "
        f"when its shard changed by at most {rebuild.inline_max_delta} vectors (and holds at most "
        f"{rebuild.inline_max_vectors}); the rebuild_index job builds it whatever the delta.",
    )
    def vector_index(
        context: AssetExecutionContext,
        store: StoreResource,
        embedder: EmbedderResource,
        vector_index: VectorIndexResource,
        shard_lease: ShardLeaseResource,  # held for the run: one writer per shard
    ) -> Iterator[MaterializeResult]:
        shard = int(context.partition_key)
        grace_store, index, model_id = store.get(), vector_index.get(), embedder.get().model_id
        if context.run.job_name == INGEST_JOB:
            view = shard_view(index, shard, grace_store.embedded_chunk_ids(shard, index.shards, model_id), model_id)
            skip = inline_refusal(view, rebuild.inline_max_delta, rebuild.inline_max_vectors)
            if skip:
                context.log.info(f"shard {shard}: index not rebuilt in this ingest run: {skip}")
                return
        rebuilt = rebuild_shard(grace_store, index, shard, model_id)
        built, view, seconds = rebuilt.built, rebuilt.view, rebuilt.seconds
        context.log.info(f"shard {shard}: built version {built.version} with {built.items} vectors in {seconds:.2f}s")
        yield MaterializeResult(
            metadata={
                **_counts(view),
                "version": built.version,
                "items": built.items,
                "build_seconds": round(seconds, 3),
            }
        )

    return vector_index


def _counts(view: ShardView) -> dict:
    return {
        "total_embeddings": len(view.searchable),
        "indexed_embeddings": view.indexed,
        "pending": len(view.pending),
        "tombstoned": len(view.tombstoned),
        "index_coverage": view.coverage,
    }


def build_coverage_check() -> AssetChecksDefinition:
    @asset_check(
        asset="vector_index",
        name=COVERAGE_CHECK,
        description="Right after a build, every searchable embedding of the shard is in its index.",
    )
    def index_covers_every_embedding(
        context: AssetCheckExecutionContext,
        store: StoreResource,
        embedder: EmbedderResource,
        vector_index: VectorIndexResource,
    ) -> AssetCheckResult:
        shard = int(context.op_execution_context.partition_key)
        grace_store, index, model_id = store.get(), vector_index.get(), embedder.get().model_id
        view = shard_view(index, shard, grace_store.embedded_chunk_ids(shard, index.shards, model_id), model_id)
        counts = _counts(view)
        return AssetCheckResult(
            passed=view.coverage == 1.0,
            severity=AssetCheckSeverity.ERROR,
            metadata={"shard": shard, **counts},
        )

    return index_covers_every_embedding


def build_consistency_check(manifest: Manifest) -> AssetChecksDefinition:
    @asset_check(
        asset="vector_index",
        name=CONSISTENCY_CHECK,
        description="Every shard's index files are intact (checksum, counts, model) and hold the store's "
        "vectors: no orphan vectors, none missing, and a spread of up to 2,000 vectors per shard equal "
        "to the store's. Runs with every rebuild, or on demand.",
    )
    def index_matches_store(
        store: StoreResource, embedder: EmbedderResource, vector_index: VectorIndexResource
    ) -> AssetCheckResult:
        grace_store, index, model_id = store.get(), vector_index.get(), embedder.get().model_id
        searchable = grace_store.searchable_chunk_ids(index.shards, model_id)
        reports = [check_shard(grace_store, index, shard, ids, model_id) for shard, ids in enumerate(searchable)]
        problems = [problem for report in reports for problem in report.problems]
        stale = [f"shard {r.shard}: {r.orphans} orphan, {r.missing} missing" for r in reports if r.orphans or r.missing]
        return AssetCheckResult(
            passed=not problems and not stale,
            # Corruption must be repaired; staleness only means the next rebuild is due.
            severity=AssetCheckSeverity.ERROR if problems else AssetCheckSeverity.WARN,
            description="; ".join(problems + stale) or "store and index files agree",
            metadata={
                "problems": len(problems),
                "orphan_vectors": sum(r.orphans for r in reports),
                "missing_vectors": sum(r.missing for r in reports),
                "vectors_compared": sum(r.vectors_compared for r in reports),
            },
        )

    return index_matches_store


def build_rebuild_schedule(manifest: Manifest, rebuild_job: JobDefinition) -> ScheduleDefinition:
    @schedule(
        name="rebuild_every_shard",
        job=rebuild_job,
        cron_schedule=manifest.index.rebuild.cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description="Rebuilds every shard's index on the manifest's cron, whatever its staleness.",
    )
    def rebuild_every_shard(context):
        return [
            RunRequest(
                run_key=f"{context.scheduled_execution_time.isoformat()}:{shard}",
                partition_key=str(shard),
                tags=rebuild_tags(shard, "schedule", manifest.routing.origins),
            )
            for shard in range(manifest.index.shards)
        ]

    return rebuild_every_shard

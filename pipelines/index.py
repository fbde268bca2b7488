"""vector_index: one Annoy index per shard, rebuilt from the store and swapped in atomically."""

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
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
from grace.core.names import rebuild_tags
from grace.resources.consistency import check_shard
from grace.resources.embedder import EmbedderResource
from grace.resources.lease import ShardLeaseResource, lease_resource_defs
from grace.resources.shard_status import rebuild_shard
from grace.resources.store import StoreResource
from grace.resources.vector_index import VectorIndexResource

COVERAGE_CHECK = "index_covers_every_embedding"
CONSISTENCY_CHECK = "index_matches_store"


def build_index_asset(
    manifest: Manifest, shards: PartitionsDefinition, embeddings_asset: AssetsDefinition
) -> AssetsDefinition:
    @asset(
        partitions_def=shards,
        deps=[embeddings_asset],
        resource_defs=lease_resource_defs(manifest.store_url),
        group_name="index",
        kinds={"annoy"},
        check_specs=[
            AssetCheckSpec(
                COVERAGE_CHECK,
                asset="vector_index",
                description="Right after a rebuild, every searchable embedding of the shard is in its index.",
            )
        ],
        description=f"Annoy index per shard ({manifest.index.trees} trees), built into a new "
        "file and swapped in atomically; searches scan newer embeddings exactly until the next build.",
    )
    def vector_index(
        context: AssetExecutionContext,
        store: StoreResource,
        embedder: EmbedderResource,
        vector_index: VectorIndexResource,
        shard_lease: ShardLeaseResource,  # held for the run: one writer per shard
    ) -> MaterializeResult:
        shard = int(context.partition_key)
        rebuilt = rebuild_shard(store.get(), vector_index.get(), shard, embedder.get().model_id)
        built, view, seconds = rebuilt.built, rebuilt.view, rebuilt.seconds
        counts = {
            "total_embeddings": len(view.searchable),
            "indexed_embeddings": view.indexed,
            "pending": len(view.pending),
            "tombstoned": len(view.tombstoned),
            "index_coverage": view.coverage,
        }
        context.log.info(f"shard {shard}: built version {built.version} with {built.items} vectors in {seconds:.2f}s")
        return MaterializeResult(
            metadata={**counts, "version": built.version, "items": built.items, "build_seconds": round(seconds, 3)},
            check_results=[
                AssetCheckResult(
                    check_name=COVERAGE_CHECK,
                    passed=view.coverage == 1.0,
                    severity=AssetCheckSeverity.ERROR,
                    metadata=counts,
                )
            ],
        )

    return vector_index


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

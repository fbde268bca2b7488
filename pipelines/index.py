"""vector_index: one Annoy index per shard, rebuilt from the store and swapped in atomically.

Its metadata is the shard's own (shard_* keys, one partition each); whole-corpus totals are index_status's.
"""

from collections.abc import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    DefaultScheduleStatus,
    JobDefinition,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    RunRequest,
    ScheduleDefinition,
    asset,
    asset_check,
    schedule,
)

from grace.core.manifest import Manifest
from grace.core.names import INGEST_JOB, rebuild_tags
from grace.resources.index.consistency import check_shard
from grace.resources.index.shard_state import ShardView, inline_refusal, rebuild_shard, shard_view
from grace.resources.runs.lease import ShardLeaseResource, lease_resource_defs
from grace.resources.runs.progress import Progress
from grace.resources.wiring.dagster_resources import EmbedderResource, StoreResource, VectorIndexResource

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
        owners=manifest.owners,
        kinds={"annoy"},
        output_required=False,
        description=f"Annoy index per shard ({manifest.index.trees} trees), built into a new file and swapped "
        "in atomically; searches scan newer embeddings exactly until the next build. An ingest run builds it "
        f"when its shard changed by at most {rebuild.inline_max_delta} vectors (and holds at most "
        f"{rebuild.inline_max_vectors}); the rebuild_index job builds it whatever the delta. Each partition's "
        "metadata is that shard's alone (shard_embeddings, shard_pending, shard_index_coverage…); the whole "
        "corpus's totals and a table of every shard are on index_status.",
    )
    def vector_index(
        context: AssetExecutionContext,
        store: StoreResource,
        embedder: EmbedderResource,
        vector_index: VectorIndexResource,
        shard_lease: ShardLeaseResource,  # held for the run: one writer per shard
    ) -> Iterator[MaterializeResult]:
        shard = int(context.partition_key)
        grace_store, index = store.get(), vector_index.get()
        model_id = grace_store.serving.model(embedder.get().model_id)  # the old model's, while re-embedding
        if context.run.job_name == INGEST_JOB:
            view = shard_view(grace_store, index, shard, model_id)
            skip = inline_refusal(view, rebuild.inline_max_delta, rebuild.inline_max_vectors)
            if skip:
                context.log.info(f"shard {shard}: index not rebuilt in this ingest run: {skip}")
                return
        progress = Progress(
            context.log.info, f"shard {shard} index build", expected_seconds=_last_build_seconds(context, shard)
        )
        rebuilt = progress.run(lambda: rebuild_shard(grace_store, index, shard, model_id))
        built, view, seconds = rebuilt.built, rebuilt.view, rebuilt.seconds
        context.log.info(f"shard {shard}: built version {built.version} with {built.items} vectors in {seconds:.2f}s")
        unreferenced = retired = lexical_written = lexical_swept = 0
        if context.run.job_name != INGEST_JOB:
            # Vectors and postings belong to no shard, so each shard's rebuild sweeps its share of the hash space.
            unreferenced = grace_store.embeddings.delete_unreferenced(shard, index.shards)
            keep = {model_id, embedder.get().model_id}
            retired = grace_store.embeddings.delete_retired_models(keep, shard, index.shards)
            lexical_written = grace_store.lexical.repair(shard, index.shards)
            lexical_swept = grace_store.lexical.delete_unreferenced(shard, index.shards)
        yield MaterializeResult(
            metadata={
                **_shard_counts(view),
                "unreferenced_vectors_deleted": MetadataValue.int(unreferenced),
                "retired_model_vectors_deleted": MetadataValue.int(retired),
                "lexical_texts_indexed": MetadataValue.int(lexical_written),
                "lexical_texts_deleted": MetadataValue.int(lexical_swept),
                "version": built.version,
                "items": MetadataValue.int(built.items),
                "build_seconds": MetadataValue.float(round(seconds, 3)),
            }
        )

    return vector_index


def _shard_counts(view: ShardView) -> dict:
    """One shard's numbers, named so: a partition's metadata never looks like the corpus's total."""
    return {
        "shard": MetadataValue.int(view.shard),
        "shard_embeddings": MetadataValue.int(view.total),
        "shard_indexed_embeddings": MetadataValue.int(view.indexed),
        "shard_pending": MetadataValue.int(len(view.pending)),
        "shard_tombstoned": MetadataValue.int(len(view.tombstoned)),
        "shard_index_coverage": MetadataValue.float(float(view.coverage)),
    }


def _last_build_seconds(context: AssetExecutionContext, shard: int) -> float | None:
    """How long this shard's last build took, from its last materialization: the ETA of this one."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("vector_index"), asset_partitions=[str(shard)]), limit=1
    ).records
    if not records:
        return None
    seconds = records[0].asset_materialization.metadata.get("build_seconds")
    return float(seconds.value) if seconds is not None else None


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
        grace_store, index = store.get(), vector_index.get()
        model_id = grace_store.serving.model(embedder.get().model_id)  # the old model's, while re-embedding
        view = shard_view(grace_store, index, shard, model_id)
        return AssetCheckResult(
            passed=view.coverage == 1.0,
            severity=AssetCheckSeverity.ERROR,
            metadata=_shard_counts(view),
        )

    return index_covers_every_embedding


def build_consistency_check(manifest: Manifest) -> AssetChecksDefinition:
    @asset_check(
        asset="vector_index",
        name=CONSISTENCY_CHECK,
        description="The shard's index files are intact (checksum, counts, model), hold the store's vectors (a "
        "spread of up to 2,000 per shard compared), and the change log that search reads agrees with a pass "
        "over the shard. Orphan or missing vectors only mean the shard is stale: reported, not failed. Runs "
        "with each shard's rebuild (every shard on the rebuild schedule), or for all shards on demand.",
    )
    def index_matches_store(
        context: AssetCheckExecutionContext,
        store: StoreResource,
        embedder: EmbedderResource,
        vector_index: VectorIndexResource,
    ) -> AssetCheckResult:
        grace_store, index = store.get(), vector_index.get()
        model_id = grace_store.serving.model(embedder.get().model_id)  # the old model's, while re-embedding
        partition = (
            context.op_execution_context.partition_key if context.op_execution_context.has_partition_key else None
        )
        shards = [int(partition)] if partition is not None else range(index.shards)
        reports = [check_shard(grace_store, index, shard, model_id) for shard in shards]
        problems = [problem for report in reports for problem in report.problems]
        stale = [
            f"shard {r.shard} stale: {r.orphans} orphan, {r.missing} missing vectors, {r.lexical_missing} chunks "
            "without postings"
            for r in reports
            if r.stale
        ]
        return AssetCheckResult(
            # Corruption must be repaired; staleness only means the next rebuild is due.
            passed=not problems,
            severity=AssetCheckSeverity.ERROR if problems else AssetCheckSeverity.WARN,
            description="; ".join(problems + stale) or "store and index files agree",
            metadata={
                "shards_checked": len(reports),
                "problems": len(problems),
                "stale_shards": len(stale),
                "orphan_vectors": sum(r.orphans for r in reports),
                "missing_vectors": sum(r.missing for r in reports),
                "vectors_compared": sum(r.vectors_compared for r in reports),
                "lexical_missing": sum(r.lexical_missing for r in reports),
                "postings_compared": sum(r.postings_compared for r in reports),
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

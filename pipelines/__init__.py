"""Assets, jobs and schedules, built from the manifest alone: the shard pipeline, index status, task jobs, routing
stats and keys."""

from __future__ import annotations

import warnings

from dagster import (
    AssetSelection,
    AssetSpec,
    BetaWarning,
    Definitions,
    StaticPartitionsDefinition,
    define_asset_job,
)

from grace.core.manifest import Manifest
from grace.core.names import INGEST_JOB, REBUILD_JOB, source_asset_key
from grace.pipelines.executor import run_executor
from grace.pipelines.index import (
    build_consistency_check,
    build_coverage_check,
    build_index_asset,
    build_rebuild_schedule,
)
from grace.pipelines.index_status import build_index_status_checks, index_status_spec
from grace.pipelines.ingest import build_ingest_assets
from grace.pipelines.keys import build_key_assets, build_rotate_keys_job, build_rotate_keys_schedule
from grace.pipelines.routing_stats import (
    build_routing_stats_asset,
    build_routing_stats_job,
    build_routing_stats_schedule,
)
from grace.pipelines.source_checks import build_deletes_held_check
from grace.pipelines.task_jobs import build_task_jobs


def shard_partitions(shards: int) -> StaticPartitionsDefinition:
    """Static shard partitions: a document's shard is hash(document id) % shards."""
    return StaticPartitionsDefinition([str(shard) for shard in range(shards)])


def source_spec(manifest: Manifest, source) -> AssetSpec:
    return AssetSpec(
        key=source_asset_key(source.name),
        group_name="sources",
        owners=manifest.owners,
        kinds={"folder"},
        description=f"Watched folder {source.path}: files matching {', '.join(source.patterns)}, read only, never "
        f"written. Sensor watch_{source.name} records each change and requests an ingest run for the changed "
        f"shards, tagged grace/origin={source.origin}.",
        metadata={
            "path": str(source.path),
            "patterns": ", ".join(source.patterns),
            "origin": source.origin,
            "max_bytes": int(source.max_bytes),
        },
    )


def build_pipelines(manifest: Manifest) -> Definitions:
    shards = shard_partitions(manifest.index.shards)
    specs = [source_spec(manifest, source) for source in manifest.sources]
    with warnings.catch_warnings():
        # The shard assets bind shard_lease with @asset(resource_defs=...), a beta parameter; see lease.py.
        warnings.filterwarnings("ignore", category=BetaWarning, message=".*resource_defs.*")
        ingest_assets = build_ingest_assets(manifest, shards, [spec.key for spec in specs])
        index_asset = build_index_asset(manifest, shards, ingest_assets[-1])
    status_spec = index_status_spec(manifest, index_asset.key)
    status_checks = build_index_status_checks(manifest)
    coverage_check = build_coverage_check()
    consistency_check = build_consistency_check(manifest)
    # in_process (the default): one process per run, so the model loads once and steps skip a process start.
    executor = run_executor(manifest)
    ingest_job = define_asset_job(
        INGEST_JOB,
        selection=AssetSelection.assets(*ingest_assets, index_asset) - AssetSelection.checks(consistency_check),
        executor_def=executor,
        description="Reads, chunks and embeds whatever a shard has pending, holding the shard's lease, and "
        "brings the shard's index up to date when the change is small.",
    )
    rebuild_job = define_asset_job(
        REBUILD_JOB,
        selection=AssetSelection.assets(index_asset) | AssetSelection.checks(coverage_check, consistency_check),
        executor_def=executor,
        description="Rebuilds one shard's Annoy index from the store and swaps it in.",
    )
    stats_asset = build_routing_stats_asset(manifest)
    stats_job = build_routing_stats_job(stats_asset, executor)
    key_assets = build_key_assets(manifest)
    rotate_keys_job = build_rotate_keys_job(manifest, key_assets)
    return Definitions(
        assets=[*specs, *ingest_assets, index_asset, status_spec, stats_asset, *key_assets],
        asset_checks=[
            coverage_check,
            consistency_check,
            status_checks,
            *(build_deletes_held_check(source) for source in manifest.sources),
        ],
        jobs=[ingest_job, rebuild_job, stats_job, rotate_keys_job, *build_task_jobs(manifest)],
        schedules=[
            build_rebuild_schedule(manifest, rebuild_job),
            build_routing_stats_schedule(manifest, stats_job),
            build_rotate_keys_schedule(manifest, rotate_keys_job),
        ],
        # On celery, the UI's ad hoc materializations go to the workers too; else Dagster's default stays.
        executor=executor if manifest.executor.kind == "celery" else None,
    )

"""index_status: the whole corpus at a glance. The index_freshness sensor reports it without a run whenever
the index changes; its checks, reported with it, can also be executed from the UI."""

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSpec,
    AssetKey,
    AssetSpec,
    multi_asset_check,
)

from grace.core.manifest import Manifest
from grace.pipelines.labels import store_kind
from grace.resources.index.report import INDEX_STATUS, ORPHAN_CHECK, index_report
from grace.resources.wiring.dagster_resources import EmbedderResource, StoreResource, VectorIndexResource


def index_status_spec(manifest: Manifest, index_key: AssetKey) -> AssetSpec:
    return AssetSpec(
        INDEX_STATUS,
        deps=[index_key],
        group_name="index",
        owners=manifest.owners,
        kinds={"annoy", store_kind(manifest)},
        description="The whole corpus, every shard together: total, indexed, pending and tombstoned embeddings, "
        "index coverage, documents by status, orphan vectors, the files of the watched folders that match no "
        "pattern by suffix (not_read, as each source's last full scan counted them), and a table with one row per "
        "shard (the numbers of `grace stats`). Reported by the index_freshness sensor, without a run, when the index "
        "changes and at least every few minutes. vector_index's own metadata is one shard's.",
    )


def build_index_status_checks(manifest: Manifest) -> AssetChecksDefinition:
    allowed = manifest.index.rebuild.when_stale_fraction

    @multi_asset_check(
        name="check_index_status",
        specs=[
            AssetCheckSpec(
                ORPHAN_CHECK,
                asset=INDEX_STATUS,
                description="Stored vectors that no chunk has the text of any more (left by edits and deletions) "
                "stay under index.rebuild.when_stale_fraction of all stored vectors: each rebuild_index run sweeps "
                "those older than 30 minutes. Fails (WARN) when sweeps stop.",
            )
        ],
    )
    def index_status_checks(store: StoreResource, embedder: EmbedderResource, vector_index: VectorIndexResource):
        report = index_report(store.get(), vector_index.get(), embedder.get().model_id)
        for outcome in report.checks(allowed):
            yield AssetCheckResult(**outcome.fields())

    return index_status_checks

"""Rebuild a shard's index once too much of it is stale, and report index_status, the whole corpus at a
glance, without a run: a materialization with the totals and a per-shard table, and its checks."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    AssetMaterialization,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from grace.core.manifest import Manifest
from grace.core.names import INGEST_JOB, REBUILD_JOB, rebuild_tags
from grace.resources.index.report import INDEX_STATUS, IndexReport, index_report
from grace.resources.index.shard_state import ShardView, inline_refusal, shard_views
from grace.resources.wiring.dagster_resources import EmbedderResource, StoreResource, VectorIndexResource
from grace.sensors.folder import TICK_SECONDS
from grace.sensors.json_cursor import JsonCursor
from grace.sensors.run_records import run_in_flight

# index_status is reported when the shards' counts changed, at most every REPORT_MIN_SECONDS (a busy
# ingest changes them every tick), and at least every REPORT_EVERY_SECONDS even if they did not:
# document counts and orphan vectors move too, and the UI's plots keep a steady pace.
REPORT_MIN_SECONDS = 30.0
REPORT_EVERY_SECONDS = 300.0


@dataclass
class FreshnessCursor(JsonCursor):
    """fingerprint: the shards' counts at the last index_status report; reported_at: when (epoch seconds)."""

    fingerprint: str = ""
    reported_at: float = 0.0

    def report_due(self, fingerprint: str, now: float) -> bool:
        age = now - self.reported_at
        return age >= REPORT_EVERY_SECONDS or (fingerprint != self.fingerprint and age >= REPORT_MIN_SECONDS)


def build_freshness_sensor(manifest: Manifest) -> SensorDefinition:
    rebuild = manifest.index.rebuild
    threshold = rebuild.when_stale_fraction

    @sensor(
        name="index_freshness",
        job_name=REBUILD_JOB,
        minimum_interval_seconds=TICK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Requests a shard rebuild when pending + tombstoned vectors pass {threshold:.0%}, and reports "
        "index_status (whole-corpus totals, a table of every shard, the no_orphan_vectors check) when the index "
        "changes, without a run.",
    )
    def index_freshness(
        context: SensorEvaluationContext,
        store: StoreResource,
        embedder: EmbedderResource,
        vector_index: VectorIndexResource,
    ):
        grace_store, index = store.get(), vector_index.get()
        target_model_id = embedder.get().model_id
        model_id = grace_store.serving.model(target_model_id)  # the old model's, while re-embedding
        views = shard_views(grace_store, index, model_id)
        requests = []
        for view in views:
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
        cursor, now = FreshnessCursor.parse(context.cursor), time.time()
        fingerprint, events = _fingerprint(model_id, views), []
        if cursor.report_due(fingerprint, now):
            events = status_events(index_report(grace_store, index, target_model_id), threshold)
            cursor = FreshnessCursor(fingerprint, now)
        skip = None
        if not requests:
            skip = f"every shard is under {threshold:.0%} stale or already rebuilding"
            skip += "; index_status reported" if events else "; index_status unchanged, not reported"
        return SensorResult(run_requests=requests, asset_events=events, cursor=cursor.dump(), skip_reason=skip)

    return index_freshness


def status_events(report: IndexReport, orphan_share_allowed: float) -> list:
    """index_status's materialization and its checks' evaluations, as the sensor daemon records them."""
    return [
        AssetMaterialization(AssetKey(INDEX_STATUS), metadata=report.metadata()),
        *(AssetCheckEvaluation(**outcome.fields()) for outcome in report.checks(orphan_share_allowed)),
    ]


def _fingerprint(model_id: str, views: list[ShardView]) -> str:
    """The shards' counts and index versions, hashed: what a tick compares with the last report."""
    counts = [
        (view.shard, view.total, len(view.pending), len(view.tombstoned), view.index and view.index.meta.version)
        for view in views
    ]
    text = json.dumps([model_id, counts, [view.index_problem for view in views]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]

"""One sensor per watched folder: file changes become store rows and per-shard ingest runs."""

import time
from contextlib import nullcontext
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from grace.core.manifest import Manifest, SourceConfig
from grace.core.names import DELETES_HELD_CHECK, INGEST_JOB, REASON_TAG, ingest_tags, source_asset_key
from grace.resources.store.held_deletes import Hold
from grace.resources.text.chunking import chunker_for
from grace.resources.text.extraction import source_stamps
from grace.resources.wiring.dagster_resources import EmbedderResource, StoreResource
from grace.sensors.json_cursor import JsonCursor
from grace.sensors.push import pusher_for, run_key, sensor_name
from grace.sensors.run_records import run_in_flight
from grace.sensors.scan import ScanResult, reconcile
from grace.sensors.watcher import watcher_for

# The sensor daemon loops every 5 s at best; asking for less means "every loop".
TICK_SECONDS = 2
LOGGED_PATHS = 3  # paths a tick's message names before it only counts


@dataclass
class FolderCursor(JsonCursor):
    """last_change: the newest change event already turned into a run request.
    reconciled_at: when a scan of the whole folder last began (epoch seconds).
    scan_unfinished: the last scan ran out of its time budget; the next tick scans the whole folder.
    deletes_held: whether the source's deletes were held when its check was last reported.
    An unreadable cursor starts afresh: a whole-folder scan, and run keys stop double requests."""

    last_change: int = 0
    reconciled_at: float = 0.0
    scan_unfinished: bool = False
    deletes_held: bool | None = None  # as the deletes_not_held check last reported it (None: never)


def build_folder_sensor(manifest: Manifest, source: SourceConfig) -> SensorDefinition:
    """Find what changed in the folder, record it, and request one ingest run per changed shard.

    With watch.events, a tick reconciles only the paths watchdog reported; the whole folder
    is scanned at startup and every watch.reconcile_every_seconds, and that periodic
    reconcile also re-requests shards that still have work but no run (a killed run) and
    hides the documents of sources removed from grace.yaml.
    A tick records for a few seconds at most (sensors/scan.py): a larger change, such as the
    first scan of a large folder, goes on over the next ticks, each requesting runs for what
    it recorded.
    Change events stay in the store until a later tick has committed the cursor that
    covers them, so a crash between recording and requesting loses nothing, and run keys
    stop double requests.
    """
    shards = manifest.index.shards

    @sensor(
        name=sensor_name(source),
        job_name=INGEST_JOB,
        minimum_interval_seconds=TICK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Watches {source.path} ({', '.join(source.patterns)}) for source '{source.name}'.",
    )
    def watch_folder(context: SensorEvaluationContext, store: StoreResource, embedder: EmbedderResource):
        grace_store = store.get()
        cursor = FolderCursor.parse(context.cursor)
        grace_store.ledger.forget_changes(source.name, cursor.last_change)
        watcher, started = watcher_for(source) if manifest.watch.events else (None, True)
        pusher = pusher_for(manifest, source, watcher, grace_store) if watcher else None
        reconcile_due = time.time() - cursor.reconciled_at >= manifest.watch.reconcile_every_seconds
        if reconcile_due:
            cursor.reconciled_at = time.time()
        with watcher.lock if watcher else nullcontext():
            dirty = watcher.journal.drain() if watcher else None
            if started or reconcile_due or cursor.scan_unfinished:
                dirty = None  # the whole folder's scan covers every path a drained event named
            try:
                scan = reconcile(grace_store, source, shards, dirty)
            except Exception:
                if watcher:  # the drained paths are acknowledged only once their scan has committed
                    watcher.journal.give_back(dirty)
                raise
            since = pusher.sensor_since(cursor.last_change) if pusher else cursor.last_change
            pending = grace_store.ledger.pending_changes(source.name, since, shards)
        cursor.scan_unfinished = not scan.finished
        cursor.last_change = pending.last_change_id
        requests = [
            RunRequest(
                run_key=run_key(source, shard, pending.last_change_id),
                partition_key=str(shard),
                tags=ingest_tags(source.origin, source.name, shard, size, manifest.routing.origins),
            )
            for shard, size in sorted(pending.bytes_by_shard.items())
        ]
        if reconcile_due:
            retired = grace_store.ledger.retire_other_sources([known.name for known in manifest.sources])
            if retired:
                context.log.info(f"{retired} documents of sources no longer in grace.yaml left search")
            requests += _unfinished_work(context, manifest, source, grace_store, embedder, set(pending.bytes_by_shard))
        unfinished = "; the scan goes on next tick" if cursor.scan_unfinished else ""
        if scan.held is not None:
            unfinished += f"; {held_message(source, scan.held)}"
            context.log.warning(held_message(source, scan.held))
        if requests:
            context.log.info(
                f"{source.name}: {len(scan.changed)} changed, {len(scan.moved)} moved, {len(scan.deleted)} deleted; "
                f"runs for shards {sorted(request.partition_key for request in requests)}{unfinished}"
            )
        skip = None
        if not requests:
            how = "full scan" if dirty is None else "events"
            recorded = describe_recorded(scan)
            skip = (
                f"recorded {recorded} in {source.path}, no run needed ({how}){unfinished}"
                if recorded
                else f"no changes in {source.path} ({how}){unfinished}"
            )
        held = grace_store.holds.of(source.name)
        checks = []
        if cursor.deletes_held != (held is not None):
            cursor.deletes_held = held is not None
            checks.append(deletes_held_evaluation(source, held))
        return SensorResult(run_requests=requests, asset_events=checks, cursor=cursor.dump(), skip_reason=skip)

    return watch_folder


def deletes_held_evaluation(source: SourceConfig, held: Hold | None) -> AssetCheckEvaluation:
    """The deletes_not_held check as the tick finds it, recorded without a run."""
    return AssetCheckEvaluation(
        asset_key=AssetKey(source_asset_key(source.name)),
        check_name=DELETES_HELD_CHECK,
        passed=held is None,
        severity=AssetCheckSeverity.ERROR,
        description=held_message(source, held) if held else "no deletes held",
    )


def held_message(source: SourceConfig, held: Hold) -> str:
    return (
        f"{source.name}: {held.describe()}; the documents stay searchable. The hold ends when the folder "
        f"comes back; `grace sources release {source.name}` applies the deletes instead"
    )


def describe_recorded(scan: ScanResult) -> str:
    """What a scan recorded, e.g. "1 move (a.txt -> b.txt), 2 deleted (x.txt, y.txt)"; "" for nothing."""
    parts = []
    if scan.moved:
        moves = [f"{old} -> {new}" for old, new in scan.moved]
        parts.append(f"{len(moves)} move{'s' if len(moves) > 1 else ''}{_examples(moves)}")
    if scan.deleted:
        parts.append(f"{len(scan.deleted)} deleted{_examples(scan.deleted)}")
    if scan.changed:
        parts.append(f"{len(scan.changed)} new or changed{_examples([file.path for file in scan.changed])}")
    return ", ".join(parts)


def _examples(paths: list[str]) -> str:
    shown = ", ".join(paths[:LOGGED_PATHS])
    return f" ({shown}{', …' if len(paths) > LOGGED_PATHS else ''})"


def _unfinished_work(context, manifest, source, grace_store, embedder, requested: set[int]) -> list[RunRequest]:
    """Shards with work left by a run that died, and no ingest run queued or running."""
    chunker = chunker_for(manifest, embedder.get().tokenizer_file)
    stuck = grace_store.ledger.shards_needing_ingest(
        source.name, manifest.index.shards, chunker.settings_key, embedder.get().model_id, source_stamps(source)
    )
    return [
        RunRequest(
            partition_key=str(shard),
            tags={
                **ingest_tags(source.origin, source.name, shard, 0, manifest.routing.origins),
                REASON_TAG: "unfinished work",
            },
        )
        for shard in sorted(stuck - requested)
        if not run_in_flight(context.instance, INGEST_JOB, shard)
    ]

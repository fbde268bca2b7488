"""One sensor per watched folder: file changes become store rows and per-shard ingest runs."""

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from grace.manifest import SourceConfig
from pipelines import INGEST_JOB
from resources.store import StoreResource
from sensors.scan import scan_source

# The sensor daemon loops every 5 s at best; asking for less means "every loop".
TICK_SECONDS = 2


def ingest_tags(source: SourceConfig, shard: int, data_size_bytes: int) -> dict[str, str]:
    return {
        "grace/origin": source.origin,
        "grace/source": source.name,
        "grace/shard": str(shard),
        "grace/data_size_bytes": str(data_size_bytes),
    }


def build_folder_sensor(source: SourceConfig, shards: int) -> SensorDefinition:
    """Scan the folder, record changes, and request one ingest run per shard that changed.

    The cursor is the id of the last change event turned into a run request; events stay
    in the store until a later tick has committed that cursor, so a crash between
    recording and requesting loses nothing, and run keys stop any double request.
    """

    @sensor(
        name=f"watch_{source.name}",
        job_name=INGEST_JOB,
        minimum_interval_seconds=TICK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Watches {source.path} ({', '.join(source.patterns)}) for source '{source.name}'.",
    )
    def watch_folder(context: SensorEvaluationContext, store: StoreResource):
        grace_store = store.get()
        committed = int(context.cursor or 0)
        grace_store.forget_changes(source.name, committed)
        source.path.mkdir(parents=True, exist_ok=True)
        scan = scan_source(grace_store, source)
        pending = grace_store.pending_changes(source.name, committed, shards)
        if not pending.bytes_by_shard:
            return SkipReason(f"no changes in {source.path}")
        context.log.info(
            f"{source.name}: {len(scan.changed)} changed, {len(scan.moved)} moved, "
            f"{len(scan.deleted)} deleted; shards {sorted(pending.bytes_by_shard)}"
        )
        context.update_cursor(str(pending.last_change_id))
        return [
            RunRequest(
                run_key=f"{source.name}:{shard}:{pending.last_change_id}",
                partition_key=str(shard),
                tags=ingest_tags(source, shard, size),
            )
            for shard, size in sorted(pending.bytes_by_shard.items())
        ]

    return watch_folder

"""Names shared across layers: job names, run tag keys and the tags each kind of run carries."""

from __future__ import annotations

INGEST_JOB = "ingest"
REBUILD_JOB = "rebuild_index"

ORIGIN_TAG = "grace/origin"
SOURCE_TAG = "grace/source"
SHARD_TAG = "grace/shard"
DATA_SIZE_TAG = "grace/data_size_bytes"
REASON_TAG = "grace/reason"
REBUILD_REASON_TAG = "grace/rebuild_reason"
# Dagster puts this tag on every partitioned run, however it was launched (sensor,
# backfill, UI, schedule), so a limit keyed on it reaches runs that carry no Grace tag.
PARTITION_TAG = "dagster/partition"

INDEX_ORIGIN = "index"


def ingest_tags(origin: str, source: str, shard: int, data_size_bytes: int) -> dict[str, str]:
    """Tags of a shard's ingest run requested for one source."""
    return {
        ORIGIN_TAG: origin,
        SOURCE_TAG: source,
        SHARD_TAG: str(shard),
        DATA_SIZE_TAG: str(data_size_bytes),
    }


def rebuild_tags(shard: int, reason: str) -> dict[str, str]:
    """Tags of a shard's index rebuild run."""
    return {ORIGIN_TAG: INDEX_ORIGIN, SHARD_TAG: str(shard), REBUILD_REASON_TAG: reason}

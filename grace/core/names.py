"""Names shared across layers: job names, run tag keys and the tags each kind of run carries."""

from __future__ import annotations

from collections.abc import Collection

INGEST_JOB = "ingest"
REBUILD_JOB = "rebuild_index"
DELETES_HELD_CHECK = "deletes_not_held"  # on each sources/<name> asset: the folder sensor reports it

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
ROUTING_ORIGIN = "routing"  # the routing_stats job's own runs

# Routed tasks: one job per handler that grace.yaml's routes name.
BUILTIN_HANDLERS = ("ingest", "search", "reindex", "rotate_keys")
HANDLER_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
TASK_JOB_PREFIX = "task_"
TASK_ID_TAG = "grace/task_id"
TASK_TYPE_TAG = "grace/task_type"
SLA_TAG = "grace/sla_ms"
PRIORITY_TAG = "dagster/priority"  # Dagster's own: the queue starts higher values first
# Carried only by runs whose origin has no quota of its own in grace.yaml: the run queue
# limits each value of this tag to routing.default_quota, and never touches listed origins.
UNLISTED_ORIGIN_TAG = "grace/unlisted_origin"
# Retry a task's run when its worker died, never because its handler raised.
RETRY_ON_STEP_FAILURE_TAG = "dagster/retry_on_asset_or_op_failure"
ROUTING_STATS_JOB = "routing_stats"


def task_job_name(handler: str) -> str:
    return f"{TASK_JOB_PREFIX}{handler}"


def origin_tags(origin: str, listed_origins: Collection[str]) -> dict[str, str]:
    """The origin tag, plus the unlisted-origin tag that puts an origin without a quota under the default."""
    tags = {ORIGIN_TAG: origin}
    if origin not in listed_origins:
        tags[UNLISTED_ORIGIN_TAG] = origin
    return tags


def ingest_tags(
    origin: str, source: str, shard: int, data_size_bytes: int, listed_origins: Collection[str]
) -> dict[str, str]:
    """Tags of a shard's ingest run requested for one source."""
    return {
        **origin_tags(origin, listed_origins),
        SOURCE_TAG: source,
        SHARD_TAG: str(shard),
        DATA_SIZE_TAG: str(data_size_bytes),
    }


def rebuild_tags(shard: int, reason: str, listed_origins: Collection[str]) -> dict[str, str]:
    """Tags of a shard's index rebuild run."""
    return {**origin_tags(INDEX_ORIGIN, listed_origins), SHARD_TAG: str(shard), REBUILD_REASON_TAG: reason}


# Set by `grace dev` for the processes it starts: host:port of the webserver that push launches through.
WEBSERVER_ENV = "GRACE_WEBSERVER"
DEV_LOCK = "grace-dev.lock"  # in state_dir: one `grace dev` per state dir
CODE_LOCATION = "grace"  # the workspace's location name, which launches through the webserver name


def source_asset_key(source: str) -> list[str]:
    """The asset key path of a watched folder in the Dagster UI."""
    return ["sources", source]

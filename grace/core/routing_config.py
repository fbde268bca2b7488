"""grace.yaml's `routing` section, and the run queue limits the Dagster instance must enforce for it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ByteSize, ConfigDict, Field, StringConstraints, ValidationInfo, model_validator

from grace.core.names import BUILTIN_HANDLERS, HANDLER_NAME_PATTERN, ORIGIN_TAG, PARTITION_TAG, UNLISTED_ORIGIN_TAG
from grace.core.validators import resolve_path, validate_cron

TAG_VALUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"
TaskType = Annotated[str, StringConstraints(pattern=TAG_VALUE_PATTERN)]
OriginName = Annotated[str, StringConstraints(pattern=TAG_VALUE_PATTERN)]
HandlerName = Annotated[str, StringConstraints(pattern=HANDLER_NAME_PATTERN)]
MAX_SLA_MS = 86_400_000  # a day


class RoutingConfig(BaseModel):
    """Tasks become Dagster runs: capacity and per-origin quotas are the instance's run queue limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    capacity: int = Field(default=50, ge=1, le=1000, description="runs at once, all origins together")
    default_quota: int = Field(default=4, ge=1, description="runs at once for each origin not listed in origins")
    origins: dict[OriginName, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: {"intent": 12, "ingest": 8},
        description="runs at once per origin (the grace/origin tag); each quota at most capacity",
    )
    shard_runs: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="shard runs (ingest and rebuild_index) at once, every shard together: how many shards are "
        "processed in parallel (default: as many as capacity allows); each shard still has at most one run",
    )
    routes: dict[TaskType, HandlerName] = Field(
        default_factory=lambda: {name: name for name in BUILTIN_HANDLERS},
        description=f"task type -> handler: a built-in ({', '.join(BUILTIN_HANDLERS)}) "
        "or an @handler in the handlers folder",
    )
    default_sla_ms: int = Field(default=30_000, ge=1, le=MAX_SLA_MS, description="SLA of a task that gives none")
    max_payload_bytes: ByteSize = Field(
        default=ByteSize(1_000_000), gt=0, le=100_000_000, description="cap on a task's canonical JSON payload"
    )
    inbox: Path = Field(default=Path("tasks"), description="folder watched for task files (*.json)")
    handlers: Path = Field(
        default=Path("handlers"), description="the only folder whose @handler functions routes may name"
    )
    stats_cron: str = Field(default="*/5 * * * *", description="when the routing_stats asset is materialized")

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> RoutingConfig:
        validate_cron(self.stats_cron)
        over = {origin: quota for origin, quota in self.origins.items() if quota > self.capacity}
        if over:
            hint = "" if "origins" in self.model_fields_set else " (the default origins; set routing.origins)"
            raise ValueError(f"quotas above capacity {self.capacity}: {over}{hint}; lower them or raise capacity")
        if self.default_quota > self.capacity:
            raise ValueError(f"default_quota {self.default_quota} is above capacity {self.capacity}")
        if self.shard_runs is not None and self.shard_runs > self.capacity:
            raise ValueError(f"shard_runs {self.shard_runs} is above capacity {self.capacity}")
        if not self.routes:
            raise ValueError("routes is empty, so no task could run; map at least one task type to a handler")
        # Resolved here (not by a field validator) so that the folder below is the one checked.
        object.__setattr__(self, "inbox", resolve_path(self.inbox, info))
        object.__setattr__(self, "handlers", resolve_path(self.handlers, info))
        # Whether each route names a known handler needs the project's handler modules imported:
        # user code, so it is checked after parsing (grace/resources/tasks/project_handlers.py).
        return self

    def quota_of(self, origin: str) -> int:
        return self.origins.get(origin, self.default_quota)


def run_queue_limits(routing: RoutingConfig) -> dict:
    """max_concurrent_runs and tag_concurrency_limits for the instance's run queue."""
    return {
        "max_concurrent_runs": routing.capacity,
        "tag_concurrency_limits": [
            *(
                {"key": ORIGIN_TAG, "value": origin, "limit": quota}
                for origin, quota in sorted(routing.origins.items())
            ),
            # Runs of origins without a quota carry this tag too: each value gets default_quota.
            {"key": UNLISTED_ORIGIN_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": routing.default_quota},
            # Dagster tags every partitioned run with its partition, however it was launched
            # (sensor, backfill, UI, schedule), so a second run of a shard waits in the queue
            # instead of waiting on the shard's lease in a worker.
            {"key": PARTITION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
            # ...and this many shard runs at once, whichever shards: the parallelism of ingest and rebuilds.
            *([{"key": PARTITION_TAG, "limit": routing.shard_runs}] if routing.shard_runs is not None else []),
        ],
    }


def instance_drift(instance, routing: RoutingConfig) -> list[str]:
    """How the run queue of a Dagster instance differs from the one grace.yaml asks for ([] if it does not).

    Each line says what differs; the fix is always the same: let `grace dev` render the instance.
    """
    queue = getattr(instance.run_coordinator, "get_run_queue_config", None)
    if queue is None:
        return [
            f"the instance's run coordinator is {type(instance.run_coordinator).__name__}, not a queue: "
            "no capacity or quota is enforced"
        ]
    config = queue()
    return queue_drift(run_queue_limits(routing), config.max_concurrent_runs, list(config.tag_concurrency_limits))


def queue_drift(expected: dict, actual_max_runs: int, actual_limits: list) -> list[str]:
    """The differences between two run queue configurations, one line each."""
    problems = []
    if actual_max_runs != expected["max_concurrent_runs"]:
        problems.append(
            f"max_concurrent_runs is {actual_max_runs}, grace.yaml's capacity is {expected['max_concurrent_runs']}"
        )
    want = {_limit_key(limit): limit["limit"] for limit in expected["tag_concurrency_limits"]}
    have = {_limit_key(limit): limit.get("limit") for limit in actual_limits or []}
    for key, limit in sorted(want.items()):
        if have.get(key) != limit:
            problems.append(f"limit on {key[0]}={key[1]} is {have.get(key, 'missing')}, grace.yaml says {limit}")
    for key in sorted(set(have) - set(want)):
        problems.append(f"limit on {key[0]}={key[1]} ({have[key]}) is not in grace.yaml")
    return problems


def _limit_key(limit: dict) -> tuple[str, str]:
    value = limit.get("value")
    if isinstance(value, dict):
        value = "<each value>" if value.get("applyLimitPerUniqueValue") else "<any>"
    return limit["key"], "<any>" if value is None else str(value)

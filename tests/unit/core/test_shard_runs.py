"""routing.shard_runs: how many shards are processed at once, enforced by Dagster's own run queue logic."""

from __future__ import annotations

import pytest
from dagster import DagsterRun
from dagster._utils.tags import TagConcurrencyLimitsCounter

from grace.core.manifest import ManifestError, load_manifest
from grace.core.names import PARTITION_TAG
from grace.core.routing_config import run_queue_limits

SOURCE = "sources:\n  - {name: docs, path: inbox}\n"


def shard_run(shard: int) -> DagsterRun:
    return DagsterRun(job_name="ingest", tags={PARTITION_TAG: str(shard)})


@pytest.mark.parametrize("shard_runs", [1, 2, 3])
def test_the_run_queue_starts_at_most_shard_runs_shards_and_one_run_per_shard(write_manifest, shard_runs):
    routing = load_manifest(write_manifest(SOURCE + f"routing:\n  shard_runs: {shard_runs}\n")).routing
    limits = run_queue_limits(routing)["tag_concurrency_limits"]
    running = [shard_run(shard) for shard in range(shard_runs)]
    queue = TagConcurrencyLimitsCounter(limits, running)
    assert queue.is_blocked(shard_run(shard_runs))  # a further shard waits for a free slot
    assert queue.is_blocked(shard_run(0))  # a shard's second run waits for its first
    one_fewer = TagConcurrencyLimitsCounter(limits, running[:-1])
    assert not one_fewer.is_blocked(shard_run(shard_runs))  # a slot freed: the next shard may start


def test_without_shard_runs_only_capacity_and_one_run_per_shard_apply(write_manifest):
    limits = run_queue_limits(load_manifest(write_manifest(SOURCE)).routing)["tag_concurrency_limits"]
    queue = TagConcurrencyLimitsCounter(limits, [shard_run(shard) for shard in range(8)])
    assert not queue.is_blocked(shard_run(8)) and queue.is_blocked(shard_run(3))


def test_shard_runs_above_capacity_is_refused_naming_both(write_manifest):
    routing = "routing:\n  capacity: 2\n  default_quota: 1\n  origins: {intent: 1}\n  shard_runs: 3\n"
    with pytest.raises(ManifestError) as caught:
        load_manifest(write_manifest(SOURCE + routing))
    assert "shard_runs 3 is above capacity 2" in str(caught.value)

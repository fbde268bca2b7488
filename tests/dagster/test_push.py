"""Push: folder events launch ingest runs at once; the sensor still covers whatever a push missed.

These tests drive a real watchdog observer, the real store and a real Dagster instance; only
the webserver call is replaced by a function that records the launch (the daemon test in
test_freshness_daemon.py launches through the real GraphQL API).
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from dagster import DagsterRun, DagsterRunStatus

from grace.core.names import WEBSERVER_ENV
from grace.core.process_caches import PUSHERS
from grace.resources.db.schema import shard_key_of
from grace.sensors.push import Pusher, run_key
from grace.sensors.watcher import watcher_for
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment, tick_until
from tests.helpers.store_writes import unprocessed_documents


class Launches:
    """Stands in for the webserver: records each launch's tags, or fails while `failing` is set.

    attempts: every call's tags, failed ones included; tags: the launches that succeeded.
    """

    def __init__(self) -> None:
        self.tags: list[dict[str, str]] = []
        self.attempts: list[dict[str, str]] = []
        self.failing = False

    def __call__(self, tags: dict[str, str]) -> str:
        self.attempts.append(tags)
        if self.failing:
            raise ConnectionError("webserver unreachable")
        self.tags.append(tags)
        return f"run-{len(self.tags)}"


@pytest.fixture
def deployment(tmp_path, store_url):
    # Its watcher is stopped after the test by conftest's _stop_process_threads.
    return Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2, events=True)


@pytest.fixture
def pushing(deployment, monkeypatch):
    """(launches, pusher) over the same watcher the folder sensor uses, and known to the sensor as its pusher."""
    source = deployment.manifest.sources[0]
    deployment.tick()  # the first tick starts the watcher and scans the (empty) folder
    watcher, started = watcher_for(source)
    assert not started
    launches = Launches()
    pusher = Pusher(deployment.manifest, source, watcher, deployment.store, launches, deployment.instance)
    monkeypatch.setenv(WEBSERVER_ENV, "127.0.0.1:1")  # never called: the sensor finds this pusher in PUSHERS
    PUSHERS.put(source.name, pusher)
    yield launches, pusher
    PUSHERS.pop(source.name)
    pusher.stop()


def wait_until(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not met")


def shard_of(deployment, path: str) -> int:
    return shard_key_of(deployment.store.ledger.documents_of("docs")[path].id) % 2


def test_a_burst_launches_one_run_per_shard_and_the_sensor_requests_none(deployment, pushing):
    launches, pusher = pushing
    names = [f"note{i}.txt" for i in range(8)]
    for name in names:
        deployment.drop(name, f"a note about topic {name}")
    wait_until(lambda: set(deployment.store.ledger.documents_of("docs")) == set(names))
    shards = {shard_of(deployment, name) for name in names}
    wait_until(lambda: {int(tags["dagster/partition"]) for tags in launches.tags} == shards)
    time.sleep(0.5)  # nothing more arrives for the same burst
    assert len(launches.tags) == len(shards) == 2
    for tags in launches.tags:
        assert tags["grace/reason"] == "push" and tags["dagster/sensor_name"] == "watch_docs"
        assert tags["grace/origin"] == "ingest" and tags["grace/shard"] == tags["dagster/partition"]
        assert int(tags["grace/data_size_bytes"]) > 0
    assert deployment.tick() == [], "the sensor requests nothing the pusher launched"
    assert list(pusher.launched) == ["run-1", "run-2"]


def test_a_tick_during_a_slow_launch_requests_no_second_run(deployment, pushing):
    launches, pusher = pushing
    arrived, release = threading.Event(), threading.Event()
    recorded = launches.__call__

    def slow_launch(tags: dict[str, str]) -> str:
        arrived.set()
        assert release.wait(10), "the test never released the launch"
        return recorded(tags)

    pusher.launch = slow_launch
    deployment.drop("racing.txt", "a tick runs while this file's run is on its way to the webserver")
    assert arrived.wait(10), "the pusher never launched"
    try:
        requests = deployment.tick()  # the launch is still on its way, so Dagster holds no run under its key yet
    finally:
        release.set()
    wait_until(lambda: len(launches.tags) == 1)
    assert requests == [], "a second run under the pushed run's key"
    deployment.drop("after.txt", "a change the pusher has not launched for is still the sensor's")
    pusher.stop()  # so that only the sensor can see the new change
    [request] = tick_until(deployment, bool)
    assert request.partition_key == str(shard_of(deployment, "after.txt"))


def test_a_failed_push_is_logged_and_the_sensor_requests_the_run(deployment, pushing, caplog):
    launches, pusher = pushing
    launches.failing = True
    caplog.set_level(logging.ERROR, logger="grace.sensors.push")
    deployment.drop("missed.txt", "the webserver was down when this arrived")
    failed = lambda: [record for record in caplog.records if record.name == "grace.sensors.push"]  # noqa: E731
    wait_until(failed)
    [record] = failed()
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "push for source docs failed; the folder sensor will pick the change up"
    assert isinstance(record.exc_info[1], ConnectionError)
    # The push really tried the launch, for the shard of the new file, and counts no run as launched.
    [attempt] = launches.attempts
    assert attempt["dagster/partition"] == str(shard_of(deployment, "missed.txt"))
    assert list(pusher.launched) == []
    [request] = deployment.tick()
    assert request.partition_key == str(shard_of(deployment, "missed.txt"))
    assert request.run_key == attempt["dagster/run_key"], "the sensor asks for the very run the push failed to launch"
    # the thread survived the failure: the next event is pushed
    launches.failing = False
    deployment.drop("later.txt", "the webserver is back")
    wait_until(lambda: len(launches.tags) == 1)
    assert launches.tags[0]["dagster/partition"] == str(shard_of(deployment, "later.txt"))


def test_a_shard_whose_run_has_not_started_gets_no_second_run(deployment, pushing):
    launches, pusher = pushing
    for shard in range(2):
        deployment.instance.add_run(
            DagsterRun(
                job_name="ingest",
                run_id=f"queued-{shard}",
                status=DagsterRunStatus.NOT_STARTED,  # QUEUED needs a code origin; both wait
                tags={"dagster/partition": str(shard)},
            )
        )
    deployment.drop("waiting.txt", "a queued run will read this")
    wait_until(lambda: "waiting.txt" in deployment.store.ledger.documents_of("docs"))
    time.sleep(0.5)
    assert launches.tags == []  # the queued run reads the change when it starts
    assert unprocessed_documents(deployment.store, shard_of(deployment, "waiting.txt"), 2)


def test_an_overflowed_journal_is_left_to_the_sensors_full_scan(deployment, pushing):
    launches, pusher = pushing
    journal = pusher.watcher.journal
    with pusher.watcher.lock:  # hold the pusher off while the overflow is staged
        journal.give_back(None)
    assert pusher.push() == []
    assert journal.drain() is None, "the full scan is still owed to the sensor"


def test_run_keys_match_the_sensor_format(deployment):
    assert run_key(deployment.manifest.sources[0], 3, 17) == "docs:3:17"


def test_an_ingest_run_indexes_a_small_delta_before_it_ends(deployment):
    for i in range(4):
        deployment.drop(f"n{i}.txt", f"note {i} about owls and word{i}")
    requests = deployment.tick()
    for request in requests:
        result = deployment.run_job("ingest", int(request.partition_key))
        assert result.success
        [evaluation] = result.get_asset_check_evaluations()
        assert evaluation.check_name == "index_covers_every_embedding" and evaluation.passed
    total = deployment.stats()["total"]
    assert total["index_coverage"] == 1.0 and total["pending"] == 0 and total["indexed_embeddings"] == 4


def test_a_big_delta_is_left_to_the_rebuild_job(tmp_path):
    deployment = Deployment(tmp_path, None, HashingEmbedderResource(), shards=1, inline_max_delta=2)
    for i in range(3):
        deployment.drop(f"n{i}.txt", f"note {i} about owls and word{i}")
    [request] = deployment.tick()
    result = deployment.run_job("ingest", 0)
    assert result.success
    materialized = {event.asset_key.path[-1] for event in result.get_asset_materialization_events()}
    assert materialized == {"documents", "chunks", "embeddings"}  # vector_index skipped, with its check
    assert result.get_asset_check_evaluations() == []
    assert deployment.stats()["total"]["pending"] == 3
    assert deployment.run_job("rebuild_index", 0).success
    assert deployment.stats()["total"]["index_coverage"] == 1.0

"""One writer per shard: the lease rows (unit), and two real runs racing for one shard."""

from __future__ import annotations

import functools
import inspect
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from dagster import DagsterInstance, materialize
from sqlalchemy import func, select

from grace.core.names import ingest_tags
from grace.resources.db.schema import chunks, run_heartbeats, shard_leases
from grace.resources.runs.lease import HeldShard, ShardLeases, as_utc
from grace.resources.store.chunks import Chunks
from grace.resources.store.documents import Documents
from grace.resources.store.embeddings import Embeddings
from grace.resources.store.index_delta import IndexDelta
from grace.resources.store.layout import ShardLayout
from grace.resources.store.ledger import Ledger
from grace.resources.store.serving_model import ServingModel
from grace.resources.store.store import Store
from grace.resources.store.texts import SealedText
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import INGEST, Deployment, assert_same_state

T0 = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)
TTL = 20.0


@pytest.fixture
def leases(store_url):
    store = Store(store_url)
    yield ShardLeases(store.engine, lease_ttl_seconds=TTL)
    store.dispose()


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def test_a_free_shard_is_taken_and_a_held_one_names_its_holder(leases):
    assert leases.try_acquire(0, "run-a", now=T0) is None
    assert leases.try_acquire(0, "run-b", now=T0 + seconds(1)) == "run-a"
    assert leases.try_acquire(1, "run-b", now=T0 + seconds(1)) is None, "shards are independent"
    assert leases.try_acquire(0, "run-a", now=T0 + seconds(2)) is None, "the holder may take it again"


def test_renewal_keeps_the_lease_and_expiry_lets_another_run_steal_it(leases):
    assert leases.try_acquire(0, "run-a", now=T0) is None
    assert leases.renew(0, "run-a", now=T0 + seconds(15))
    # Without the renewal the lease would have lapsed at T0 + TTL.
    assert leases.try_acquire(0, "run-b", now=T0 + seconds(TTL + 5)) == "run-a"
    assert leases.try_acquire(0, "run-b", now=T0 + seconds(15 + TTL + 1)) is None, "expired: stolen"
    assert not leases.renew(0, "run-a", now=T0 + seconds(40)), "the old holder learns it lost the shard"
    assert leases.try_acquire(0, "run-a", now=T0 + seconds(40)) == "run-b"


def test_releasing_a_run_frees_its_leases_and_heartbeat_only(leases):
    leases.beat("run-a", 0, now=T0)
    leases.beat("run-b", 1, now=T0)
    assert leases.try_acquire(0, "run-a", now=T0) is None
    assert leases.try_acquire(1, "run-b", now=T0) is None
    assert leases.release_run("run-a") == 1
    assert set(leases.heartbeats()) == {"run-b"}
    assert leases.try_acquire(0, "run-c", now=T0 + seconds(1)) is None, "freed at once, long before expiry"
    assert leases.try_acquire(1, "run-c", now=T0 + seconds(1)) == "run-b"
    assert leases.release_run("run-a") == 0


def test_a_lease_is_taken_over_only_from_the_run_named(leases):
    assert leases.try_acquire(0, "run-a", now=T0) is None
    assert not leases.take_over(0, "run-c", from_run_id="run-b", now=T0 + seconds(1))
    assert leases.take_over(0, "run-c", from_run_id="run-a", now=T0 + seconds(1)), "long before expiry"
    assert leases.try_acquire(0, "run-a", now=T0 + seconds(2)) == "run-c"


def test_heartbeats_come_back_timezone_aware_on_every_backend(leases):
    leases.beat("run-a", 3, now=T0)
    leases.beat("run-a", 3, now=T0 + seconds(7))
    [beat] = leases.heartbeats().values()
    assert (beat.run_id, beat.shard) == ("run-a", 3)
    assert beat.beat_at.tzinfo is not None and beat.beat_at == T0 + seconds(7)


def test_naive_datetimes_are_read_as_utc():
    naive = datetime(2026, 11, 27, 4, 0)
    assert as_utc(naive) == T0 and as_utc(naive).tzinfo is UTC
    assert as_utc(datetime(2026, 11, 27, 5, 0, tzinfo=timezone(timedelta(hours=1)))) == T0


def test_a_held_shard_beats_waits_and_cleans_up(leases):
    """The second holder waits (logging the holder once) until the first exits; exit deletes both rows."""
    messages: list[str] = []
    errors: list[BaseException] = []
    log = _ListLog(messages)
    first = HeldShard(leases, "run-a", 0, log, renew_seconds=0.1, poll_seconds=0.05)
    second = HeldShard(leases, "run-b", 0, log, renew_seconds=0.1, poll_seconds=0.05)
    entered_second = threading.Event()

    def hold_second():
        try:
            with second:
                entered_second.set()
        except BaseException as error:  # collected: the assertion below must see it
            errors.append(error)

    with first:
        beat_before = leases.heartbeats()["run-a"].beat_at
        waiter = threading.Thread(target=hold_second)
        waiter.start()
        time.sleep(0.5)
        assert not entered_second.is_set(), "a busy shard makes the second run wait"
        assert leases.heartbeats()["run-a"].beat_at > beat_before, "the renewal thread beats"
        assert "run-b" in leases.heartbeats(), "a waiting run beats too, so it is not taken for dead"
    waiter.join(timeout=10)
    assert errors == [] and entered_second.is_set()
    assert [m for m in messages if "waits for run run-a" in m] == [
        "shard 0 is busy: run run-b waits for run run-a to finish"
    ], "logged once"
    with leases.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(shard_leases)).scalar_one() == 0
        assert connection.execute(select(func.count()).select_from(run_heartbeats)).scalar_one() == 0


def test_a_waiting_run_takes_over_at_once_from_a_run_dagster_has_ended(leases):
    """A worker killed by SIGKILL is failed by Dagster's code server; its lease need not expire first."""
    assert leases.try_acquire(0, "killed-run") is None
    messages: list[str] = []
    started = time.monotonic()
    with HeldShard(leases, "next-run", 0, _ListLog(messages), holder_ended=lambda run_id: run_id == "killed-run"):
        assert time.monotonic() - started < TTL / 2
        assert leases.try_acquire(0, "other-run") == "next-run"
    assert any("killed-run has ended" in message for message in messages)


def test_a_run_interrupted_while_waiting_leaves_no_rows_behind(leases):
    """Terminating a waiting run (Dagster raises in its main thread) must not leave a heartbeat to reap."""
    assert leases.try_acquire(0, "holder") is None

    def interrupted(_holder: str) -> bool:
        raise KeyboardInterrupt

    waiting = HeldShard(leases, "waiting-run", 0, _ListLog([]), holder_ended=interrupted)
    with pytest.raises(KeyboardInterrupt):
        waiting.__enter__()
    assert set(leases.heartbeats()) == set()
    assert not waiting._renewer.is_alive()
    assert leases.try_acquire(0, "other") == "holder"


class _ListLog:
    def __init__(self, messages: list[str]):
        self.messages = messages

    def info(self, message: str) -> None:
        self.messages.append(message)

    warning = error = info


TOPICS = {
    f"note-{i}.txt": f"note {i} about {topic} " * 40
    for i, topic in enumerate(["volcanoes", "chess", "tomatoes", "orbits", "bees", "tides"])
}


def test_two_runs_on_one_shard_never_write_it_together(tmp_path, store_url, monkeypatch):
    """A sensor-tagged run and an untagged (backfill-like) run of shard 0, launched at once on two
    separate Dagster instances: only the Grace store's lease can keep them apart."""
    (tmp_path / "raced").mkdir()
    (tmp_path / "clean").mkdir()
    raced = Deployment(tmp_path / "raced", store_url, HashingEmbedderResource(), shards=1)
    for name, text in TOPICS.items():
        raced.drop(name, text)
    assert [request.partition_key for request in raced.tick()] == ["0"]
    spans: dict[int, list[float]] = {}
    _time_store_calls(monkeypatch, spans)
    results, errors = {}, []
    instances = {"sensor": DagsterInstance.ephemeral(), "backfill": DagsterInstance.ephemeral()}
    start = threading.Barrier(2)

    def run(name: str, tags: dict[str, str]) -> None:
        try:
            start.wait()
            results[name] = materialize(
                [*raced.defs.assets, *raced.defs.asset_checks],
                selection=INGEST,
                partition_key="0",
                resources=raced.resources,
                instance=instances[name],
                tags=tags,
            )
        except BaseException as error:  # collected: the assertion below must see it
            errors.append(error)

    threads = [
        threading.Thread(target=run, args=("sensor", ingest_tags("ingest", "docs", 0, 100, ()))),
        threading.Thread(target=run, args=("backfill", {})),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    monkeypatch.undo()
    assert errors == []
    assert set(results) == {"sensor", "backfill"} and all(result.success for result in results.values())
    assert len(spans) == 2, "both runs touched the store"
    (start_a, end_a), (start_b, end_b) = sorted(spans.values())
    assert end_a <= start_b, f"runs wrote shard 0 together: {start_a:.3f}-{end_a:.3f} and {start_b:.3f}-{end_b:.3f}"
    waited = [
        entry.user_message
        for name, result in results.items()
        for entry in instances[name].all_logs(result.run_id)
        if "waits for run" in entry.user_message
    ]
    assert len(waited) == 1, "exactly one run found the shard busy and waited"

    with raced.store.engine.connect() as connection:
        total = connection.execute(select(func.count()).select_from(chunks)).scalar_one()
        distinct = connection.execute(
            select(func.count()).select_from(select(chunks.c.document_id, chunks.c.ordinal).distinct().subquery())
        ).scalar_one()
    assert total == distinct > 0, "no duplicate chunks"

    clean = Deployment(tmp_path / "clean", f"sqlite:///{tmp_path / 'clean.db'}", HashingEmbedderResource(), shards=1)
    for name, text in TOPICS.items():
        clean.drop(name, text)
    clean.sync()
    assert raced.rebuild(0).success
    assert_same_state(raced.snapshot(), clean.snapshot())
    query = "a note about tides"
    assert [hit.path for hit in raced.search(query)] == [hit.path for hit in clean.search(query)]


def _time_store_calls(monkeypatch, spans: dict[int, list[float]]) -> None:
    """Record, per thread, the first start and last end of any call of the Store or its parts; the first
    call sleeps, so the other run surely asks for the shard while it is held."""

    def timed(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            began = time.monotonic()
            span = spans.setdefault(threading.get_ident(), [began, began])
            if span[0] == began:
                time.sleep(1.0)
            try:
                return method(*args, **kwargs)
            finally:
                span[1] = time.monotonic()

        return wrapper

    parts = (Store, ShardLayout, Ledger, SealedText, Documents, Chunks, Embeddings, IndexDelta, ServingModel)
    for part in parts:
        for name, method in inspect.getmembers(part, inspect.isfunction):
            if not name.startswith("_") and name != "dispose":
                monkeypatch.setattr(part, name, timed(method))

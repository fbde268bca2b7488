"""One writer per shard, guaranteed by the store: a lease row per shard, a heartbeat row per run.

A run's ShardLeaseResource registers a heartbeat for its run and shard, renews it on a daemon
thread, and waits until it holds the shard's lease; teardown releases both. The run_health
sensor fails the runs whose heartbeat stopped and frees their leases.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timedelta

from dagster import ConfigurableResource, DagsterInstance, DagsterRunStatus, InitResourceContext
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from grace.core.names import PARTITION_TAG
from grace.core.process_caches import SHARD_LEASE_RESOURCES
from grace.resources.db.schema import as_utc, run_heartbeats, shard_leases, utc_now, writer_of
from grace.resources.store.store import shared_store

# A live run renews its heartbeat and lease this often.
RENEW_SECONDS = 5.0
# Five missed renewals: long enough that a busy machine (2 cores, model encoding) never
# starves the renewal thread that long, short enough that detection (TTL + one sensor
# loop of 5-10 s) stays near 30 s, well inside the 60 s a dead run may block its shard.
HEARTBEAT_TTL_SECONDS = 25.0
# Same clock as the heartbeat, so a dead holder's lease also lapses by itself where no
# sensor runs (materialize in a notebook or a test).
LEASE_TTL_SECONDS = HEARTBEAT_TTL_SECONDS
# How often a run waiting for a busy shard asks again.
WAIT_POLL_SECONDS = 1.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Heartbeat:
    run_id: str
    shard: int | None  # None for a task run, which holds no shard of its own
    beat_at: datetime


class ShardLeases:
    """Lease and heartbeat rows in the Grace store; every method is one short transaction."""

    def __init__(self, engine: Engine, lease_ttl_seconds: float = LEASE_TTL_SECONDS):
        self.engine = engine
        self.writer = writer_of(engine)  # IMMEDIATE on SQLite: upserts read, then write
        self.lease_ttl = timedelta(seconds=lease_ttl_seconds)

    def try_acquire(self, shard: int, run_id: str, now: datetime | None = None) -> str | None:
        """Take or renew the shard's lease; None on success, else the run id holding it.

        One upsert: it writes only if the row is absent, expired, or already this run's.
        """
        now = now or utc_now()
        with self.writer.begin() as connection:
            insert = sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert
            statement = insert(shard_leases).values(shard=shard, run_id=run_id, expires_at=now + self.lease_ttl)
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[shard_leases.c.shard],
                    set_={"run_id": statement.excluded.run_id, "expires_at": statement.excluded.expires_at},
                    where=(shard_leases.c.run_id == run_id) | (shard_leases.c.expires_at < now),
                )
            )
            holder = connection.execute(select(shard_leases.c.run_id).where(shard_leases.c.shard == shard)).scalar_one()
        return None if holder == run_id else holder

    def renew(self, shard: int, run_id: str, now: datetime | None = None) -> bool:
        """Push the lease's expiry on; False if this run no longer holds it."""
        now = now or utc_now()
        with self.writer.begin() as connection:
            renewed = connection.execute(
                update(shard_leases)
                .where(shard_leases.c.shard == shard, shard_leases.c.run_id == run_id)
                .values(expires_at=now + self.lease_ttl)
            )
        return renewed.rowcount == 1

    def take_over(self, shard: int, run_id: str, from_run_id: str, now: datetime | None = None) -> bool:
        """Take the lease from a run known to have ended, expired or not; False if it changed hands meanwhile."""
        now = now or utc_now()
        with self.writer.begin() as connection:
            taken = connection.execute(
                update(shard_leases)
                .where(shard_leases.c.shard == shard, shard_leases.c.run_id == from_run_id)
                .values(run_id=run_id, expires_at=now + self.lease_ttl)
            )
        return taken.rowcount == 1

    def beat(self, run_id: str, shard: int | None, now: datetime | None = None) -> None:
        """Record that the run is alive (creating its heartbeat row if needed); shard None for a task run."""
        now = now or utc_now()
        with self.writer.begin() as connection:
            insert = sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert
            statement = insert(run_heartbeats).values(run_id=run_id, shard=shard, beat_at=now)
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[run_heartbeats.c.run_id], set_={"beat_at": statement.excluded.beat_at}
                )
            )

    def heartbeats(self) -> dict[str, Heartbeat]:
        """Every registered run's last beat, by run id."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(run_heartbeats.c.run_id, run_heartbeats.c.shard, run_heartbeats.c.beat_at))
            return {row.run_id: Heartbeat(row.run_id, row.shard, as_utc(row.beat_at)) for row in rows}

    def release_run(self, run_id: str) -> int:
        """Delete the run's heartbeat and every lease it holds; returns how many leases were freed."""
        with self.writer.begin() as connection:
            connection.execute(delete(run_heartbeats).where(run_heartbeats.c.run_id == run_id))
            return connection.execute(delete(shard_leases).where(shard_leases.c.run_id == run_id)).rowcount

    def release_lease(self, shard: int, run_id: str) -> bool:
        """Give up one shard's lease, keeping the run's heartbeat; False if the run did not hold it."""
        with self.writer.begin() as connection:
            released = connection.execute(
                delete(shard_leases).where(shard_leases.c.shard == shard, shard_leases.c.run_id == run_id)
            )
        return released.rowcount == 1


class HeldShard:
    """A context manager: beat for the run, wait for the shard's lease, and give both up on exit.

    With own_heartbeat=False (a task run, whose heartbeat its run resource keeps) it neither
    beats nor deletes the heartbeat: it only takes, renews and releases the shard's lease.
    """

    def __init__(
        self,
        leases: ShardLeases,
        run_id: str,
        shard: int,
        log: logging.Logger | logging.LoggerAdapter = logger,
        holder_ended: Callable[[str], bool] = lambda _run_id: False,
        renew_seconds: float = RENEW_SECONDS,
        poll_seconds: float = WAIT_POLL_SECONDS,
        own_heartbeat: bool = True,
    ):
        """holder_ended(run id) says whether a run is known to have ended (Dagster's own run
        status), so its lease can be taken at once instead of after it expires."""
        self.leases, self.run_id, self.shard, self.log = leases, run_id, shard, log
        self.holder_ended = holder_ended
        self.renew_seconds, self.poll_seconds = renew_seconds, poll_seconds
        self.own_heartbeat = own_heartbeat
        self.acquired = threading.Event()
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"grace-lease-{run_id[:8]}", daemon=True)

    def __enter__(self) -> HeldShard:
        if self.own_heartbeat:
            self.leases.beat(self.run_id, self.shard)
        self._renewer.start()
        try:
            self._wait_for_lease()
        except BaseException:
            self._give_up()  # interrupted while waiting (run terminated): leave nothing behind
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self._give_up()

    def _wait_for_lease(self) -> None:
        announced = None
        while (holder := self.leases.try_acquire(self.shard, self.run_id)) is not None:
            if holder != announced:
                self.log.info(f"shard {self.shard} is busy: run {self.run_id} waits for run {holder} to finish")
                announced = holder
            if self.holder_ended(holder) and self.leases.take_over(self.shard, self.run_id, holder):
                self.log.info(f"run {holder} has ended without releasing shard {self.shard}; its lease is taken over")
                break
            self._stop.wait(self.poll_seconds)
        self.acquired.set()
        self.log.info(f"run {self.run_id} holds shard {self.shard}")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            try:
                if self.own_heartbeat:
                    self.leases.beat(self.run_id, self.shard)
                if self.acquired.is_set() and not self.leases.renew(self.shard, self.run_id):
                    self.acquired.clear()  # said once; the run goes on, but no longer as the shard's writer
                    self.log.error(
                        f"run {self.run_id} lost shard {self.shard}'s lease (its heartbeat stalled past "
                        f"{HEARTBEAT_TTL_SECONDS:.0f}s and it was taken as dead); another run may now write the shard"
                    )
            except Exception as error:  # a database hiccup must not end the renewals; the next beat retries
                self.log.warning(f"run {self.run_id}: heartbeat for shard {self.shard} failed: {error}")

    def _give_up(self) -> None:
        self._stop.set()
        if self._renewer.is_alive():
            self._renewer.join()
        if self.own_heartbeat:
            self.leases.release_run(self.run_id)
        else:
            self.leases.release_lease(self.shard, self.run_id)


class ShardLeaseResource(ConfigurableResource):
    """Held for a whole run by every shard asset, however the run was launched.

    The shard comes from the run's dagster/partition tag, which Dagster sets on every
    partitioned run (sensor, backfill, UI, schedule, materialize).
    """

    url: str

    @contextlib.contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Generator[ShardLeaseResource, None, None]:
        run = context.run
        if run is None:  # built outside a run (a sensor or a test context): no shard to guard
            yield self
            return
        partition = run.tags.get(PARTITION_TAG)
        if partition is None:
            raise ValueError(
                f"shard_lease: run {run.run_id} has no '{PARTITION_TAG}' tag, so its shard is unknown; "
                "materialize the shard assets one partition per run (a backfill with one run per partition)"
            )
        leases = ShardLeases(shared_store(self.url).engine)
        instance = context.instance
        ended = (lambda holder: run_has_ended(instance, holder)) if instance is not None else (lambda _holder: False)
        with HeldShard(leases, run.run_id, int(partition), context.log or logger, ended):
            yield self


ENDED_STATUSES = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def run_has_ended(instance: DagsterInstance, run_id: str) -> bool:
    """Whether this instance knows the run and has ended it; a run it does not know is assumed alive."""
    run = instance.get_run_by_id(run_id)
    return run is not None and run.status in ENDED_STATUSES


def lease_resource_defs(store_url: str) -> dict[str, ShardLeaseResource]:
    """resource_defs binding shard_lease to each shard asset (@asset(resource_defs=...)).

    Bound on the assets, not in Definitions.resources: every run of a shard asset, however it
    was launched, then holds the lease, and a sensor context built from the Definitions'
    resources (build_sensor_context in tests) never has to open this run-scoped context manager.
    One object per store (SHARD_LEASE_RESOURCES), because Dagster rejects two different definitions of
    one key in a job.
    """
    return SHARD_LEASE_RESOURCES.get_or_make(store_url, lambda: {"shard_lease": ShardLeaseResource(url=store_url)})

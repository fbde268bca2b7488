"""A task run's heartbeat: registered before its handler starts, renewed until teardown.

A task run holds no shard, so its heartbeat row has shard NULL. The run_health sensor fails a
task run whose heartbeat stopped (a killed or hung worker); the instance's run retries then
run the task again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Generator

from dagster import ConfigurableResource, InitResourceContext

from grace.core.process_caches import TASK_HEARTBEAT_RESOURCES
from grace.resources.runs.lease import RENEW_SECONDS, ShardLeases
from grace.resources.store.store import shared_store

logger = logging.getLogger(__name__)


class RunHeartbeat:
    """A context manager: beat for the run now and every renew_seconds; delete its rows on exit."""

    def __init__(
        self,
        leases: ShardLeases,
        run_id: str,
        log: logging.Logger | logging.LoggerAdapter = logger,
        renew_seconds: float = RENEW_SECONDS,
    ):
        self.leases, self.run_id, self.log, self.renew_seconds = leases, run_id, log, renew_seconds
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"grace-beat-{run_id[:8]}", daemon=True)

    def __enter__(self) -> RunHeartbeat:
        self.leases.beat(self.run_id, None)
        self._renewer.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._renewer.join()
        # Also frees any shard lease a handler left behind (it releases its own on exit).
        self.leases.release_run(self.run_id)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            try:
                self.leases.beat(self.run_id, None)
            except Exception as error:  # a database hiccup must not end the renewals; the next beat retries
                self.log.warning(f"run {self.run_id}: heartbeat failed: {error}")


class TaskHeartbeatResource(ConfigurableResource):
    """Held for a whole task run, however it was launched; bound on the task jobs only."""

    url: str

    @contextlib.contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Generator[TaskHeartbeatResource, None, None]:
        if context.run is None:  # built outside a run (a sensor or a test context): nothing is alive
            yield self
            return
        with RunHeartbeat(ShardLeases(shared_store(self.url).engine), context.run.run_id, context.log or logger):
            yield self


def heartbeat_resource_defs(store_url: str) -> dict[str, TaskHeartbeatResource]:
    """resource_defs of every task job: one object per store (TASK_HEARTBEAT_RESOURCES), as Dagster wants
    one definition per key."""
    return TASK_HEARTBEAT_RESOURCES.get_or_make(
        store_url, lambda: {"task_heartbeat": TaskHeartbeatResource(url=store_url)}
    )

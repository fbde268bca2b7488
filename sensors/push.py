"""Push: a folder event launches its shard's ingest run at once, through the webserver's GraphQL API.

The folder sensor waits for Dagster's sensor loop (5 s at best); a pusher runs beside the
watchdog observer, in the process that watches the folder, and launches within a fraction
of a second. It records the change exactly as a sensor tick would, under the same lock, and
tags the run with the run key and sensor name the sensor would have used. The sensor's ticks
skip the changes a push has launched for (`sensor_since`), even while the launch is still on
its way, so no change gets two runs. The sensor stays the safety net: a push that fails
(webserver down, say) is only logged, and the next tick requests the run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

from dagster import DagsterInstance

from grace.core.manifest import Manifest, SourceConfig
from grace.core.names import (
    CODE_LOCATION,
    INGEST_JOB,
    PARTITION_TAG,
    REASON_TAG,
    WEBSERVER_ENV,
    ingest_tags,
)
from grace.core.process_caches import PUSHERS
from grace.resources.db.schema import PendingChange
from grace.resources.store.store import Store
from grace.sensors.run_records import WAITING, run_in_flight
from grace.sensors.scan import reconcile
from grace.sensors.watcher import FolderWatcher

QUIET_SECONDS = 0.1  # events closer together than this are one burst: one launch per shard
MAX_DELAY_SECONDS = 0.5  # a steady stream of events still launches this often
LAUNCHES_KEPT = 100  # the pusher lives as long as the code server: its memory of launches is bounded
REPOSITORY = "__repository__"  # the name Dagster gives the repository of a Definitions object
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
log = logging.getLogger(__name__)

Launch = Callable[[dict[str, str]], str]


def sensor_name(source: SourceConfig) -> str:
    return f"watch_{source.name}"


def run_key(source: SourceConfig, shard: int, last_change_id: int) -> str:
    """The run key a folder sensor gives the run for a shard's changes up to last_change_id."""
    return f"{source.name}:{shard}:{last_change_id}"


def graphql_launcher(address: str) -> Launch:
    """Launch the ingest job through the webserver at host:port; returns the run id."""
    from dagster_graphql import DagsterGraphQLClient

    host, _, port = address.rpartition(":")
    client = DagsterGraphQLClient(host, port_number=int(port))

    def launch(tags: dict[str, str]) -> str:
        return client.submit_job_execution(
            INGEST_JOB, repository_location_name=CODE_LOCATION, repository_name=REPOSITORY, tags=tags
        )

    return launch


class Pusher:
    """Turns a watcher's events into ingest runs as they happen, on a daemon thread."""

    def __init__(
        self,
        manifest: Manifest,
        source: SourceConfig,
        watcher: FolderWatcher,
        store: Store,
        launch: Launch,
        instance: DagsterInstance,
    ):
        self.manifest, self.source, self.watcher, self.store = manifest, source, watcher, store
        self.launch, self.instance = launch, instance
        self.pushed_up_to = 0  # the newest change id already launched for
        self._unlaunched_up_to = 0  # the newest change id of a launch that failed: the sensor's to request
        self.launched: deque[str] = deque(maxlen=LAUNCHES_KEPT)  # run ids, newest last (tests and logs)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"grace-push-{source.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self.watcher.journal.changed.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        changed = self.watcher.journal.changed
        while not self._stopped.is_set():
            changed.wait()
            first = time.monotonic()
            changed.clear()
            while changed.wait(QUIET_SECONDS) and time.monotonic() - first < MAX_DELAY_SECONDS:
                changed.clear()
            if self._stopped.is_set():
                return
            try:
                self.push()
            except Exception:  # the sensor's next tick covers whatever this push missed
                log.exception("push for source %s failed; the folder sensor will pick the change up", self.source.name)

    def sensor_since(self, committed: int) -> int:
        """The change id after which the sensor requests runs, given its committed cursor; call under watcher.lock.

        Changes this pusher launched for are skipped, so a tick that runs while a launch is on its way
        does not request a second run under the same key. After a failed launch the sensor requests
        from its own cursor, until a committed cursor covers what the launch missed.
        """
        if committed < self._unlaunched_up_to:
            return committed
        return max(committed, self.pushed_up_to)

    def push(self) -> list[str]:
        """Record what the journal holds and launch a run for every shard it touched; the new run ids."""
        journal = self.watcher.journal
        with self.watcher.lock:
            dirty = journal.drain()
            if dirty is None:  # only a full scan can tell what changed: that is the sensor's job
                journal.give_back(None)
                return []
            try:
                scan = reconcile(self.store, self.source, self.manifest.index.shards, dirty)
            except Exception:
                journal.give_back(dirty)
                raise
            if not scan.finished:  # more than one go can record: the sensor scans the whole folder next
                journal.give_back(None)
            pending = self.store.ledger.pending_changes(self.source.name, self.pushed_up_to, self.manifest.index.shards)
            # Advanced before launching: a launch that fails is the sensor's to request, not the next push's.
            self.pushed_up_to = pending.last_change_id
        try:
            return self._launch(pending)
        except Exception:
            with self.watcher.lock:
                self._unlaunched_up_to = max(self._unlaunched_up_to, pending.last_change_id)
            raise

    def _launch(self, pending: PendingChange) -> list[str]:
        launched = []
        for shard, size in sorted(pending.bytes_by_shard.items()):
            if run_in_flight(self.instance, INGEST_JOB, shard, statuses=WAITING):
                continue  # a run that has not started yet will read this change anyway
            tags = {
                **ingest_tags(self.source.origin, self.source.name, shard, size, self.manifest.routing.origins),
                PARTITION_TAG: str(shard),
                RUN_KEY_TAG: run_key(self.source, shard, pending.last_change_id),
                SENSOR_NAME_TAG: sensor_name(self.source),
                REASON_TAG: "push",
            }
            launched.append(self.launch(tags))
            self.launched.append(launched[-1])
        return launched


def pusher_for(manifest: Manifest, source: SourceConfig, watcher: FolderWatcher, store: Store) -> Pusher | None:
    """This process's pusher for the source's watcher (PUSHERS), started on first call; None where push is off.

    Push needs the webserver's address, which `grace dev` passes to the processes it starts.
    """
    address = os.environ.get(WEBSERVER_ENV)
    if not address or not manifest.watch.push:
        return None
    with PUSHERS.lock:
        pusher = PUSHERS.get(source.name)
        if pusher is None or pusher.watcher is not watcher:
            if pusher is not None:
                pusher.stop()
            launch = graphql_launcher(address)
            pusher = PUSHERS.put(source.name, Pusher(manifest, source, watcher, store, launch, DagsterInstance.get()))
        return pusher

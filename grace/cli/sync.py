"""`grace sync`: one pass over the watched folders in this process, with no daemon.

Each source is scanned the way its folder sensor scans it (`reconcile`), then every shard with work
gets one run of the code location's own `ingest` job, executed in process on the project's Dagster
instance (an ephemeral one when `grace dev` never rendered it). The runs take the shard leases that
every shard asset requires, so a sync beside a `grace dev` waits for a busy shard instead of writing
it at the same time. A shard whose change was too large for the ingest run's inline index build then
gets a run of `rebuild_index`, since no daemon may be there to do it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from grace.core.manifest import Manifest, SourceConfig
from grace.core.names import INGEST_JOB, REASON_TAG, REBUILD_JOB, ingest_tags, rebuild_tags

SYNC_REASON = "grace sync"
# Dagster's console logger would print every step event; a sync prints its own figures, and errors.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
BAR_WIDTH = 30


class UnknownSource(ValueError):
    """--source names no source of grace.yaml."""


@dataclass
class RunOutcome:
    """One Dagster run the sync executed."""

    job: str
    shard: int
    run_id: str
    success: bool
    error: str | None = None


@dataclass
class SyncReport:
    """What one sync found and did: files from the scans, documents and chunks from the runs' metadata."""

    sources: list[str]
    new: int = 0
    changed: int = 0
    moved: int = 0
    deleted: int = 0
    read: int = 0
    removed: int = 0
    chunks_embedded: int = 0
    quarantined: list[dict[str, str]] = field(default_factory=list)
    deletes_held: list[str] = field(default_factory=list)  # e.g. "docs: 10 deletes held (the folder is missing, ...)"
    runs: list[RunOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[RunOutcome]:
        return [run for run in self.runs if not run.success]

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "failed_runs": len(self.failed)}

    def summary(self) -> str:
        return (
            f"grace sync: {self.new} new, {self.changed} changed, {self.moved} moved, {self.deleted} deleted, "
            f"{len(self.quarantined)} quarantined; {self.chunks_embedded} chunks embedded; {len(self.runs)} runs "
            f"({len(self.failed)} failed); {self.seconds:.1f} s"
        )


def add_sync_command(commands: argparse._SubParsersAction, config_option: Callable) -> None:
    """Add `sync [--source NAME] [--json]` to the grace command."""
    sync = commands.add_parser(
        "sync", help="scan every source once and ingest what changed, in this process, with no daemon"
    )
    sync.add_argument("--source", metavar="NAME", help="only this source of grace.yaml (default: every source)")
    sync.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    config_option(sync)
    sync.set_defaults(handler=run_sync_command)


def run_sync_command(args: argparse.Namespace) -> int:
    """0 when every run succeeded, 1 when one failed, 2 for an unknown --source."""
    from grace.resources.tasks.project_handlers import load_routed_manifest

    manifest = load_routed_manifest(args.config)
    try:
        sources = chosen_sources(manifest, args.source)
    except UnknownSource as error:
        print(f"grace sync: {error}", file=sys.stderr)
        return 2
    report = sync(manifest, sources, Progress(sys.stderr))
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        print(report.summary())
        for item in report.quarantined:
            print(f"quarantined {item['source']}/{item['path']}: {item['reason']}")
        for held in report.deletes_held:
            print(f"{held}; the documents stay searchable (docs/operations.md#held-deletes)")
        for run in report.failed:
            print(f"failed: {run.job} run {run.run_id} of shard {run.shard}: {run.error}")
    return 1 if report.failed else 0


def chosen_sources(manifest: Manifest, name: str | None) -> list[SourceConfig]:
    """Every source, or the one --source names; UnknownSource naming the sources there are."""
    if name is None:
        return list(manifest.sources)
    for source in manifest.sources:
        if source.name == name:
            return [source]
    there = ", ".join(source.name for source in manifest.sources) or "none"
    raise UnknownSource(f"--source {name!r} is not a source of grace.yaml; its sources are: {there}")


def sync(manifest: Manifest, sources: Sequence[SourceConfig], progress: Progress) -> SyncReport:
    """Scan the sources, run every shard that has work, and report; the set-up is `grace dev`'s."""
    from grace.api import check_kek
    from grace.cli.keys import ensure_key_file
    from grace.cli.model import ensure_model

    started = time.monotonic()
    created = ensure_key_file(manifest)
    if created:
        print(created, file=sys.stderr, flush=True)
    check_kek(manifest)  # a missing or wrong KEK stops here, before any scan records a change
    ensure_model(manifest)
    for source in sources:
        source.path.mkdir(parents=True, exist_ok=True)
    defs = _job_definitions(manifest)
    store = defs.resources["store"].get()
    report = SyncReport(sources=[source.name for source in sources])
    touched: dict[str, set[str]] = {}
    for source in sources:
        touched[source.name] = _scan(store, source, manifest.index.shards, report, progress)
    last_changes = {
        source.name: store.ledger.pending_changes(source.name, 0, manifest.index.shards).last_change_id
        for source in sources
    }
    work = _shards_with_work(manifest, defs, store, sources)
    with _instance(manifest) as instance:
        progress.start(len(work))
        for shard, source in sorted(work.items()):
            _run_shard(manifest, defs, instance, store, shard, source, report, progress)
        progress.finish()
    for name, last_change in last_changes.items() if not report.failed else ():
        # What the folder sensor does once it has requested runs: the shards these changes named
        # have just been run, so no event is left to grow the table under cron with no daemon. After
        # a failure they stay, for a daemon's sensor to request again.
        store.ledger.forget_changes(name, last_change)
    report.quarantined = [
        {"source": name, "path": path, "reason": reason}
        for name, path, reason in store.documents.quarantined()
        if path in touched.get(name, ())
    ]
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _job_definitions(manifest: Manifest):
    """The code location's jobs and resources, as grace/definitions.py merges them, less the sensors
    (a sync is their one pass); built here because the shell may not import its sibling definitions.py."""
    from dagster import Definitions

    from grace.pipelines import build_pipelines
    from grace.resources.wiring.dagster_resources import build_resources

    return Definitions.merge(build_pipelines(manifest), Definitions(resources=build_resources(manifest)))


def _scan(store, source: SourceConfig, shards: int, report: SyncReport, progress: Progress) -> set[str]:
    """Reconcile the whole folder until the scan finishes (a sensor tick stops after its time budget);
    count what it recorded, and return the paths that are new or changed since the last look."""
    from grace.sensors.scan import reconcile

    known = set(store.ledger.documents_of(source.name))
    touched: set[str] = set()
    while True:
        scan = reconcile(store, source, shards)
        changed = [file.path for file in scan.changed]
        report.new += sum(path not in known for path in changed)
        report.changed += sum(path in known for path in changed)
        report.moved += len(scan.moved)
        report.deleted += len(scan.deleted)
        touched.update(changed, (new for _old, new in scan.moved))
        if scan.finished:
            break
        progress.line(f"{source.name}: {len(touched)} files recorded so far")
    held = store.holds.of(source.name)
    if held is not None:
        report.deletes_held.append(f"{source.name}: {held.describe()}")
    # Files refused at the scan (names that are not UTF-8) are recorded without ever being in `changed`.
    touched.update(set(store.ledger.documents_of(source.name)) - known)
    return touched


def _shards_with_work(manifest: Manifest, defs, store, sources: Sequence[SourceConfig]) -> dict[int, SourceConfig]:
    """Each shard where a source's documents wait for the ingest job, with the first such source (its tags).

    Work is read from the documents, not the change events, so a run a past sync or daemon left
    unfinished is finished too, as the sensor's periodic reconcile does.
    """
    from grace.resources.text.chunking import chunker_for
    from grace.resources.text.extraction import source_stamps

    model = defs.resources["embedder"].get()
    settings_key = chunker_for(manifest, model.tokenizer_file).settings_key
    work: dict[int, SourceConfig] = {}
    for source in sources:
        for shard in store.ledger.shards_needing_ingest(
            source.name, manifest.index.shards, settings_key, model.model_id, source_stamps(source)
        ):
            work.setdefault(shard, source)
    return work


@contextmanager
def _instance(manifest: Manifest) -> Iterator[Any]:
    """The project's Dagster instance, so the runs show in its UI and a lease holder's end is known; else ephemeral."""
    from dagster import DagsterInstance

    from grace.api import dagster_home_of

    home = dagster_home_of(manifest)
    instance = (
        DagsterInstance.from_config(str(home)) if (home / "dagster.yaml").is_file() else DagsterInstance.ephemeral()
    )
    try:
        yield instance
    finally:
        instance.dispose()


def _run_shard(manifest, defs, instance, store, shard: int, source: SourceConfig, report, progress) -> None:
    """The shard's ingest run, then its rebuild_index run if the ingest left the index behind."""
    holder = lease_holder(store, shard)
    if holder is not None:
        progress.line(f"shard {shard} is busy with run {holder}: waiting for its lease")
    tags = {
        **ingest_tags(source.origin, source.name, shard, 0, manifest.routing.origins),
        REASON_TAG: SYNC_REASON,
    }
    started = time.monotonic()
    result = _execute(defs, instance, INGEST_JOB, shard, tags, report)
    metadata = {
        event.asset_key.to_user_string(): event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    documents, embeddings = metadata.get("documents", {}), metadata.get("embeddings", {})
    read, removed = _figure(documents, "read"), _figure(documents, "removed")
    quarantined, embedded = _figure(documents, "quarantined"), _figure(embeddings, "embedded")
    report.read += read
    report.removed += removed
    report.chunks_embedded += embedded
    if result.success and "vector_index" not in metadata and _index_behind(defs, store, shard):
        _execute(defs, instance, REBUILD_JOB, shard, rebuild_tags(shard, SYNC_REASON, manifest.routing.origins), report)
    outcome = "ok" if report.runs[-1].success else "FAILED"
    progress.advance(
        f"shard {shard} {outcome}: {read} read, {removed} removed, {quarantined} quarantined, "
        f"{embedded} chunks embedded ({time.monotonic() - started:.1f} s)"
    )


def _figure(metadata: dict, key: str) -> int:
    """An integer of a materialization's metadata; 0 when the step did not materialize (a failed run)."""
    return int(metadata[key].value) if key in metadata else 0


def _execute(defs, instance, job_name: str, shard: int, tags: dict[str, str], report: SyncReport):
    result = defs.resolve_job_def(job_name).execute_in_process(
        partition_key=str(shard), instance=instance, tags=tags, run_config=QUIET_RUN_CONFIG, raise_on_error=False
    )
    report.runs.append(RunOutcome(job_name, shard, result.run_id, result.success, _failure(result)))
    return result


def _failure(result) -> str | None:
    """The first failed step and its error, in one line."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:  # Dagster wraps the step's own exception
                error = error.cause
            message = " ".join((error.message if error else "failed").split())
            return f"step {event.step_key}: {message}"
    return None if result.success else "the run failed"


def _index_behind(defs, store, shard: int) -> bool:
    """Whether the shard's index misses vectors, holds deleted ones, or is damaged."""
    from grace.resources.index.shard_state import shard_view

    index = defs.resources["vector_index"].get()
    view = shard_view(store, index, shard, store.serving.model(defs.resources["embedder"].get().model_id))
    return bool(len(view.pending) or len(view.tombstoned) or view.index_problem)


def lease_holder(store, shard: int) -> str | None:
    """The run that holds the shard's unexpired lease, if any: the sync's run will wait for it."""
    from sqlalchemy import select

    from grace.resources.db.schema import as_utc, shard_leases, utc_now

    query = select(shard_leases.c.run_id, shard_leases.c.expires_at).where(shard_leases.c.shard == shard)
    with store.engine.connect() as connection:
        row = connection.execute(query).first()
    return row.run_id if row is not None and as_utc(row.expires_at) > utc_now() else None


class Progress:
    """A bar of shards done on a terminal's stderr; plain lines when stderr is a file or a pipe (cron, CI)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.tty = stream.isatty()
        self.total = self.done = 0
        self.started = time.monotonic()

    def start(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.line(f"{total} shard(s) to run")
        self._draw()

    def advance(self, what: str) -> None:
        self.done += 1
        if self.tty:
            self._draw()
        else:
            self.line(f"{self.done}/{self.total} {what}")

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")  # clear the bar, print the line, the next draw puts the bar back
        self.stream.write(f"grace sync: {text}\n")
        self.stream.flush()
        if self.tty and self.total:
            self._draw()

    def finish(self) -> None:
        if self.tty and self.total:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        if not (self.tty and self.total):
            return
        filled = BAR_WIDTH * self.done // self.total
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        seconds = time.monotonic() - self.started
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} shards  {seconds:.0f} s")
        self.stream.flush()

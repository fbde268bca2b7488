"""Routing under a real `grace dev`: submit tasks, wait for their ends, and read what the run records say.

Shared by tests/e2e/test_routing_daemon.py and bench/routing.py.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunRecord, RunsFilter

from grace.core.manifest import Manifest, load_manifest
from grace.core.names import ORIGIN_TAG, TASK_ID_TAG
from grace.resources.store.store import Store
from grace.resources.store.taskbook import ENDED_STATUSES, TaskRecord
from grace.resources.tasks.project_handlers import accept_task

REPOSITORY = Path(__file__).resolve().parents[2]


def routing_manifest(root: Path, capacity: int, origins: dict[str, int], default_quota: int, storage: str = "") -> Path:
    """A grace.yaml with one document source, the project's handlers, and the given run queue.

    storage: a `store:` or `database:` line; empty keeps the embedded SQLite default."""
    shutil.copytree(REPOSITORY / "handlers", root / "handlers", dirs_exist_ok=True)
    quotas = ", ".join(f"{origin}: {quota}" for origin, quota in origins.items())
    path = root / "grace.yaml"
    path.write_text(
        f"state_dir: state\n{storage}"
        "sources:\n  - {name: documents, path: inbox/documents}\n"
        "index: {shards: 2, trees: 10}\n"
        f"routing:\n  capacity: {capacity}\n  default_quota: {default_quota}\n  origins: {{{quotas}}}\n"
        "  routes: {echo: echo, search: search, ingest: ingest}\n"
        "  inbox: inbox/tasks\n"
    )
    return path


class TaskDriver:
    """Submits tasks into a deployment's store and watches them end, from this process."""

    def __init__(self, manifest_path: Path, dagster_home: Path):
        self.manifest: Manifest = load_manifest(manifest_path)
        self.store = Store(self.manifest.store_url)
        self.home = dagster_home

    def instance(self) -> DagsterInstance:
        return DagsterInstance.from_config(str(self.home))

    def submit(self, **fields) -> str:
        task = accept_task(fields, self.manifest)
        self.store.tasks.add(task, "cli")
        return task.task_id

    def records(self, task_ids: list[str]) -> dict[str, TaskRecord]:
        return {task_id: self.store.tasks.get(task_id) for task_id in task_ids}

    def wait_until_ended(self, task_ids: list[str], timeout: float) -> dict[str, TaskRecord]:
        """Every task succeeded or failed; TimeoutError listing those still open."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records(task_ids)
            open_tasks = {
                task_id: record.status for task_id, record in records.items() if record.status not in ENDED_STATUSES
            }
            if not open_tasks:
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(open_tasks)} tasks still open after {timeout}s: {dict(list(open_tasks.items())[:5])}"
                )
            time.sleep(1.0)

    def run_records(self, task_ids: list[str]) -> list[RunRecord]:
        with self.instance() as instance:
            found = []
            for start in range(0, len(task_ids), 200):
                found += instance.get_run_records(RunsFilter(tags={TASK_ID_TAG: task_ids[start : start + 200]}))
            return found

    def close(self) -> None:
        self.store.dispose()


def max_concurrency(records: list[RunRecord]) -> tuple[int, dict[str, int]]:
    """Most runs at once overall and per origin, from each run's start and end time."""
    events: list[tuple[float, int, str]] = []
    for record in records:
        if record.start_time is None:
            continue
        end = record.end_time if record.end_time is not None else time.time()
        origin = record.dagster_run.tags.get(ORIGIN_TAG, "")
        # Ends sort before starts at the same instant: a slot freed and taken is not an overlap.
        events += [(record.start_time, 1, origin), (end, -1, origin)]
    running: dict[str, int] = defaultdict(int)
    peaks: dict[str, int] = defaultdict(int)
    total = peak_total = 0
    for _when, step, origin in sorted(events, key=lambda event: (event[0], event[1])):
        running[origin] += step
        total += step
        peaks[origin] = max(peaks[origin], running[origin])
        peak_total = max(peak_total, total)
    return peak_total, dict(peaks)


def succeeded_runs(records: list[RunRecord]) -> list[RunRecord]:
    return [record for record in records if record.dagster_run.status == DagsterRunStatus.SUCCESS]

"""Routing through a real `grace dev` (webserver + daemon + run queue) on 127.0.0.1.

Quotas and capacity are checked from the run records' start and end times, never from
Grace's own counters: the instance is what enforces them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from dagster import DagsterRunStatus, RunsFilter
from dagster._core.launcher import WorkerStatus

from grace.core.manifest import load_manifest
from grace.deploy.process_group import group_alive
from grace.resources.tasks.routing_report import routing_stats
from tests.helpers.devserver import DevServer, free_port
from tests.helpers.postgres import fresh_postgres_database
from tests.helpers.routing_daemon import REPOSITORY, TaskDriver, max_concurrency, routing_manifest

QUOTAS = {"alpha": 2, "beta": 1}  # gamma is unlisted: default_quota
CAPACITY, DEFAULT_QUOTA = 3, 1


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def deployment(request, tmp_path_factory):
    """One daemon for the module's tests per backend: the embedded SQLite default, then `database:`,
    which puts the run queue's runs (the instance) and the tasks (the store) on PostgreSQL."""
    root = tmp_path_factory.mktemp("routing")
    with ExitStack() as stack:
        storage = ""
        if request.param == "postgresql":
            url = stack.enter_context(fresh_postgres_database(request.getfixturevalue("postgres_admin_url")))
            storage = f"database: {{url: {url}}}\n"
        manifest = routing_manifest(root, CAPACITY, QUOTAS, DEFAULT_QUOTA, storage)
        home = root / "dagster_home"
        with DevServer(manifest, home, free_port(), root / "dagster-dev.log"):
            driver = TaskDriver(manifest, home)
            yield driver
            driver.close()


def test_a_burst_never_exceeds_any_quota_or_the_capacity(deployment):
    # Alpha's tasks head the queue: the queue must skip those over alpha's quota, and fill the
    # capacity with beta's while gamma's, under quota, wait for a free slot.
    task_ids = [
        deployment.submit(type="echo", origin=origin, payload={"message": f"{origin} {n}", "sleep_ms": 2000})
        for origin in ("alpha", "beta", "gamma")
        for n in range(5)  # enough that alpha's two and the capacity's three are reached, as asserted below
    ]
    records = deployment.wait_until_ended(task_ids, timeout=600)
    assert {record.status for record in records.values()} == {"succeeded"}
    assert all(json.loads(record.result)["message"] for record in records.values())
    runs = deployment.run_records(task_ids)
    assert len(runs) == len(task_ids)
    total, per_origin = max_concurrency(runs)
    assert per_origin["alpha"] <= 2 and per_origin["beta"] <= 1 and per_origin["gamma"] <= DEFAULT_QUOTA
    assert total <= CAPACITY
    # The limits were reached, so the check above had something to hold back.
    assert per_origin["alpha"] == 2 and total == CAPACITY, (total, per_origin)
    for record in records.values():
        assert record.queue_wait_ms is not None and record.run_ms is not None and record.sla_met is not None
        assert record.received_at <= record.queued_at <= record.started_at <= record.finished_at


def test_among_queued_tasks_a_higher_priority_starts_first(deployment):
    # Long enough for the router and task_status ticks (5 s loops) to queue all four behind it.
    blocker = deployment.submit(type="echo", origin="beta", payload={"message": "hold the slot", "sleep_ms": 30000})
    _wait_for_status(deployment, [blocker], {"started"}, timeout=120)
    low = [
        deployment.submit(type="echo", origin="beta", priority="low", payload={"message": f"low {n}"}) for n in range(3)
    ]
    urgent = deployment.submit(type="echo", origin="beta", priority="critical", payload={"message": "urgent"})
    _wait_for_status(deployment, [*low, urgent], {"queued"}, timeout=60)
    records = deployment.wait_until_ended([blocker, *low, urgent], timeout=300)
    assert records[urgent].started_at < min(records[task].started_at for task in low)


def test_sla_breaches_are_recorded_and_met_slas_are_not(deployment):
    slow = deployment.submit(type="echo", origin="alpha", sla_ms=2000, payload={"message": "slow", "sleep_ms": 4000})
    quick = deployment.submit(type="echo", origin="alpha", sla_ms=300_000, payload={"message": "quick"})
    records = deployment.wait_until_ended([slow, quick], timeout=300)
    assert records[slow].sla_met is False and records[quick].sla_met is True
    with deployment.instance() as instance:
        stats = routing_stats(instance, deployment.store.tasks, deployment.manifest.routing)
    assert stats["origins"]["alpha"]["sla_breaches"] >= 1 and stats["instance_drift"] == []


def test_bad_task_files_are_rejected_and_good_ones_run(deployment):
    inbox = deployment.manifest.routing.inbox
    (inbox / "broken.json").write_text('{"type": "echo", "origin": ')
    (inbox / "unknown.json").write_text('{"type": "laundry", "origin": "alpha"}')
    (inbox / "good.json").write_text(
        '{"task_id": "from-a-file", "type": "echo", "origin": "alpha", "payload": {"message": "hi"}}'
    )
    rejected = inbox / "rejected"
    deadline = time.monotonic() + 60
    while not ((rejected / "broken.json.error.json").exists() and (rejected / "unknown.json.error.json").exists()):
        assert time.monotonic() < deadline, f"not rejected: {sorted(path.name for path in inbox.rglob('*'))}"
        time.sleep(0.5)
    assert "malformed JSON" in (rejected / "broken.json.error.json").read_text()
    assert "unknown task type 'laundry'" in (rejected / "unknown.json.error.json").read_text()
    _wait_for_status(deployment, ["from-a-file"], {"received", "queued", "started", "succeeded"}, timeout=60)
    assert deployment.wait_until_ended(["from-a-file"], timeout=120)["from-a-file"].status == "succeeded"
    assert not (inbox / "good.json").exists()


def test_run_workers_are_forked_tracked_and_cancellable(deployment):
    """The rendered ForkingRunLauncher: each worker's pid is on its run, and cancel reaches the worker."""
    task_id = deployment.submit(type="echo", origin="alpha", payload={"message": "cancel me", "sleep_ms": 120_000})
    _wait_for_status(deployment, [task_id], {"started"}, timeout=120)
    with deployment.instance() as instance:
        [run] = instance.get_runs(filters=RunsFilter(tags={"grace/task_id": task_id}))
        pid, _, started = run.tags["grace/worker"].partition(":")
        assert Path(f"/proc/{pid}").exists() and started
        assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        assert instance.run_launcher.terminate(run.run_id)
        deadline = time.monotonic() + 60
        while instance.get_run_by_id(run.run_id).status != DagsterRunStatus.CANCELED:
            assert time.monotonic() < deadline, instance.get_run_by_id(run.run_id).status
            time.sleep(0.5)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.FAILED
        assert not instance.run_launcher.terminate(run.run_id), "nothing left to terminate"
    assert deployment.wait_until_ended([task_id], timeout=120)[task_id].status == "failed"


def test_the_seed_intent_counts_one_of_twelve_with_the_shipped_manifest(tmp_path):
    """The seed's curl body, dropped in the inbox as written; the stats are read while its run runs."""
    shutil.copy(REPOSITORY / "grace.yaml", tmp_path / "grace.yaml")
    shutil.copytree(REPOSITORY / "handlers", tmp_path / "handlers")
    manifest = load_manifest(tmp_path / "grace.yaml")
    home = tmp_path / "dagster_home"
    intent = {"intent_id": "test_intent", "goal": "Test goal", "domain": "test", "sla_ms": 30000, "priority": "normal"}
    with DevServer(tmp_path / "grace.yaml", home, free_port(), tmp_path / "dagster-dev.log"):
        driver = TaskDriver(tmp_path / "grace.yaml", home)
        (manifest.routing.inbox / "intent.json").write_text(json.dumps(intent))
        seen = None
        deadline = time.monotonic() + 180
        with driver.instance() as instance:
            while seen is None and time.monotonic() < deadline:
                stats = routing_stats(instance, driver.store.tasks, manifest.routing)["origins"]["intent"]
                if stats["current_count"] == 1:
                    seen = stats
                time.sleep(0.2)
        assert seen is not None, "the intent's run was never seen running"
        assert seen["quota_used"] == "1/12" and seen["quota"] == 12 and seen["utilization"] == 0.08
        record = driver.wait_until_ended(["test_intent"], timeout=180)["test_intent"]
        assert (record.origin, record.type, record.status) == ("intent", "test", "succeeded")
        # Whether 30 s were met depends on the machine's load; that the verdict matches the task's own times does not.
        took_ms = (record.finished_at - record.received_at).total_seconds() * 1000
        assert record.sla_met is (took_ms <= record.sla_ms) and "hits" in json.loads(record.result)
        driver.close()


def test_kill_9_of_the_daemon_mid_burst_ends_every_task(tmp_path, database_setting):
    """With the instance and the store on PostgreSQL: SIGKILL to the whole `grace dev` group
    (daemon, webserver, code server, run workers), then a new `grace dev` finishes the burst."""
    manifest = routing_manifest(tmp_path, CAPACITY, QUOTAS, DEFAULT_QUOTA, database_setting)
    home = tmp_path / "dagster_home"
    driver = TaskDriver(manifest, home)
    server = DevServer(manifest, home, free_port(), tmp_path / "first.log")
    server.start()
    task_ids = [
        driver.submit(type="echo", origin=origin, payload={"message": f"{origin} {n}", "sleep_ms": 1000})
        for n in range(4)  # the kill comes after 3 of 12 end: most are queued or running then
        for origin in ("alpha", "beta", "gamma")
    ]
    try:
        _wait_for_status(driver, task_ids, {"succeeded"}, timeout=300, at_least=3)
    finally:
        group = server.process.pid
        os.killpg(group, signal.SIGKILL)
        server.process.wait(timeout=30)
        server.log.close()
        server.process = None
    deadline = time.monotonic() + 30
    while group_alive(group):  # killed processes leave the group once their parents reap them
        assert time.monotonic() < deadline, f"process group {group} outlived SIGKILL"
        time.sleep(0.2)
    statuses = {record.status for record in driver.records(task_ids).values()}
    assert statuses - {"succeeded"}, "the kill came after the burst had ended; it proves nothing"
    with DevServer(manifest, home, free_port(), tmp_path / "second.log"):
        records = driver.wait_until_ended(task_ids, timeout=420)
    assert {record.status for record in records.values()} == {"succeeded"}, {
        task_id: (record.status, record.error) for task_id, record in records.items() if record.status != "succeeded"
    }
    driver.close()


def _wait_for_status(driver: TaskDriver, task_ids: list[str], statuses: set[str], timeout: float, at_least=None):
    """Wait until all (or at_least) of the tasks are in one of the statuses."""
    needed = len(task_ids) if at_least is None else at_least
    deadline = time.monotonic() + timeout

    # A task file is accepted a tick after it is seen: until then its record is None.
    def reached() -> int:
        return sum(record is not None and record.status in statuses for record in driver.records(task_ids).values())

    while reached() < needed:
        assert time.monotonic() < deadline, {
            task_id: record and record.status for task_id, record in driver.records(task_ids).items()
        }
        time.sleep(0.3)

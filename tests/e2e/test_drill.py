"""`grace drill` end to end: the real model, a real `grace dev` (webserver, daemon, code server, HTTP API),
every stage through the API, and no process of it left behind, whether it passes or fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

STAGES = ["ingest", "wait_indexed", "search", "submit_intent", "routing_stats", "rotate_keys", "decrypt"]
MARK = "GRACE_TEST_DRILL_MARK"  # inherited by every process the drill starts, so the test can find them all


def marked_processes(mark: str) -> dict[int, str]:
    """pid -> command line of every live process whose environment carries MARK=mark."""
    wanted = f"{MARK}={mark}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


def run_drill(*flags: str, limit: float = 500) -> tuple[int, dict, dict[int, str], dict[int, str]]:
    """(exit status, the JSON report, processes seen while it ran besides the drill, processes left after it)."""
    mark = uuid.uuid4().hex
    command = [str(Path(sys.executable).with_name("grace")), "drill", "--json", *flags]
    drill = subprocess.Popen(
        command, env={**os.environ, MARK: mark}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen: dict[int, str] = {}
    deadline = time.monotonic() + limit
    while drill.poll() is None and time.monotonic() < deadline:
        seen.update({pid: line for pid, line in marked_processes(mark).items() if pid != drill.pid})
        time.sleep(0.5)
    stdout, stderr = drill.communicate(timeout=max(1.0, deadline - time.monotonic()))
    left = marked_processes(mark)
    lines = stdout.strip().splitlines()
    assert lines, f"grace drill printed nothing; stderr: {stderr[-2000:]}"
    return drill.returncode, json.loads(lines[-1]), seen, left


def test_drill_passes_every_stage_and_leaves_no_process(onnx_model_cache):
    status, report, seen, left = run_drill()
    stages = report["stages"]
    assert [stage["name"] for stage in stages] == STAGES
    failed = {stage["name"]: stage.get("error") for stage in stages if not stage["ok"]}
    assert report["ok"] is True and failed == {} and status == 0, failed
    assert all(stage["seconds"] >= 0 for stage in stages)
    # The drill really ran the stack: Dagster's webserver, daemon and code server, and the HTTP API.
    commands = " ".join(seen.values())
    for part in ("dagster_webserver", "dagster._daemon", "code-server", "grace.cli.main serve"):
        assert part in commands, f"{part} never ran under the drill: {sorted(seen.values())}"
    assert left == {}, f"processes the drill started outlived it: {left}"
    print("drill:", json.dumps(report))


def test_a_stage_that_fails_for_real_fails_the_drill_and_still_cleans_up(onnx_model_cache):
    """No document is indexed within 10 ms of its upload: wait_indexed fails, what needs it is skipped."""
    status, report, seen, left = run_drill("--timeout", "0.01")
    assert status == 1 and report["ok"] is False
    results = {stage["name"]: stage for stage in report["stages"]}
    assert list(results) == STAGES
    assert results["ingest"]["ok"] is True
    assert (
        not results["wait_indexed"]["ok"] and "not reached within --timeout 0.01 s" in results["wait_indexed"]["error"]
    )
    assert results["search"]["error"] == "skipped: wait_indexed failed"
    assert results["rotate_keys"]["error"] == "skipped: wait_indexed failed"
    assert results["decrypt"]["error"] == "skipped: rotate_keys failed"
    assert not results["submit_intent"]["ok"]  # the intent's task cannot succeed within 10 ms either
    assert results["routing_stats"]["error"] == "skipped: submit_intent failed"
    assert seen, "the drill started nothing"
    assert left == {}, f"processes the drill started outlived it: {left}"

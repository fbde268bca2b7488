"""Driving a real `grace dev` from a test: the CLI, the webserver's GraphQL, waiting on a condition."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from grace.core.names import INGEST_JOB


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]


def grace(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("grace")), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


def wait_for(condition, timeout: float, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"condition not met within {timeout}s")


def embedding_run(instance: DagsterInstance) -> tuple[str, int] | None:
    """(run id, run worker pid) of the ingest run once its embeddings step has started."""
    for run in instance.get_runs(filters=RunsFilter(job_name=INGEST_JOB, statuses=[DagsterRunStatus.STARTED])):
        records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_START).records
        for record in records:
            event = record.event_log_entry.dagster_event
            if event.step_key == "embeddings":
                return run.run_id, event.pid
    return None

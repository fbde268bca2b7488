"""A run launcher that forks run workers from a warm process instead of starting Python afresh.

Dagster's default launcher asks the code server to spawn a new interpreter per run, which then
imports Dagster, SQLAlchemy, numpy and the embedding runtime: 2-3 s of a small ingest run's
4-6 s here. This launcher keeps a multiprocessing forkserver that has imported those libraries
once (never Grace's own or the project's code, so an edited handler or grace.yaml is read fresh by
every run) and forks each run worker from it. The worker then does exactly what
`dagster api execute_run` does. `grace dev` renders it into dagster.yaml.

Workers are tracked by a `grace/worker` run tag (pid and process start time), so run monitoring
can tell a dead worker from a live one on this host, and cancel reaches the worker.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

from dagster import DagsterRun
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData

WORKER_TAG = "grace/worker"
# Imported once by the forkserver; every run worker starts with them loaded.
PRELOAD = [
    "dagster",
    "dagster._cli.api",
    "dagster._core.storage.sqlite_storage",
    "sqlalchemy",
    "numpy",
    "pydantic",
    "cryptography.hazmat.primitives.ciphers.aead",
    "annoy",
    "onnxruntime",
    "tokenizers",
]


def _execute_run(payload: str) -> None:
    """In the forked worker: run it as `dagster api execute_run` would."""
    from dagster._cli.api import execute_run_command

    execute_run_command.callback(input_json=payload, compressed_input_json=None)  # the click command's body


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


class ForkingRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a worker forked from a warm forkserver on this host."""

    def __init__(self, inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        self._context = None
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: dict) -> ForkingRunLauncher:
        return cls(inst_data=inst_data)

    def _forkserver(self):
        with self._lock:
            if self._context is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(PRELOAD)
                self._context = context
            return self._context

    def launch_run(self, context: LaunchRunContext) -> None:
        from dagster._grpc.types import ExecuteRunArgs
        from dagster._serdes import serialize_value

        run = context.dagster_run
        payload = serialize_value(
            ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id, instance_ref=self._instance.get_ref())
        )
        worker = self._forkserver().Process(target=_execute_run, args=(payload,), name=f"run-{run.run_id[:8]}")
        worker.start()
        started = _start_time(worker.pid) or ""
        self._instance.add_run_tags(run.run_id, {WORKER_TAG: f"{worker.pid}:{started}"})
        self._instance.report_engine_event(f"Run worker forked (pid {worker.pid}).", run)

    def _worker_pid(self, run: DagsterRun) -> int | None:
        """The run's worker pid if that very process still runs on this host."""
        pid, _, started = run.tags.get(WORKER_TAG, "").partition(":")
        if not pid.isdigit():
            return None
        return int(pid) if _start_time(int(pid)) == started else None

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        if WORKER_TAG not in run.tags:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no worker recorded yet")
        if self._worker_pid(run) is None:
            return CheckRunHealthResult(WorkerStatus.FAILED, "the run worker process is gone")
        return CheckRunHealthResult(WorkerStatus.RUNNING)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        pid = self._worker_pid(run) if run else None
        if pid is None:
            return False
        self._instance.report_run_canceling(run)
        os.kill(pid, signal.SIGINT)  # the worker turns it into a clean cancel, as under `dagster api`
        return True

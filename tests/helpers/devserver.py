"""Start `grace dev` in the background and stop every process it started: for tests and benches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from grace.deploy.process_group import stop_group


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DevServer:
    """`grace dev` in its own process group, with a private DAGSTER_HOME; a context manager.

    api_port: serve the HTTP API there too (and wait for it); None passes --no-api.
    """

    def __init__(self, manifest: Path, dagster_home: Path, port: int, log: Path, api_port: int | None = None):
        self.manifest, self.home, self.port, self.log_path = manifest, dagster_home, port, log
        self.api_port = api_port
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> DevServer:
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def start(self, ready_timeout: float = 120.0) -> None:
        grace = Path(sys.executable).with_name("grace")
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                str(grace),
                "dev",
                "--config",
                str(self.manifest),
                "--port",
                str(self.port),
                "--dagster-home",
                str(self.home),
                *(["--no-api"] if self.api_port is None else ["--api-port", str(self.api_port)]),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop() reaches every child
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"grace dev exited with {self.process.returncode}; see {self.log_path}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/server_info", timeout=2)
                if self.api_port is not None:
                    urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/health", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"grace dev did not answer on port {self.port}; see {self.log_path}")

    def signal_member(self, pid: int, signum: int) -> None:
        """Signal one process of this server's group (a run worker); any other pid is refused."""
        if self.process is None or os.getpgid(pid) != self.process.pid:
            raise ValueError(f"pid {pid} is not a process of this grace dev's group; not signalling it")
        os.kill(pid, signum)

    def stop(self, grace_seconds: float = 30.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left of it."""
        if self.process is None:
            return
        stop_group(self.process, grace_seconds)
        self.log.close()
        self.process = None

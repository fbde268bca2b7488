"""Untrusted files are parsed in a worker process, so a parser that crashes, hangs or eats memory
costs that one file, never the run.

PDFium is C code and python-docx expands zip archives: a hostile file can take down or stall the
process that parses it. The worker is started on the first file that needs it, reused for the
next ones, and started again after a crash or a time-out.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any

from grace.resources.text.readers.base import ExtractedDocument, ReadLimits, Unreadable
from grace.resources.text.readers.registry import reader_for

# A parser past this much address space fails with MemoryError in the worker instead of
# pushing the machine into swap; real documents need far less (FIELD_NOTES: readers).
WORKER_ADDRESS_SPACE_BYTES = 3 << 30
DEFAULT_SECONDS_PER_FILE = 60.0
# The worker is a fresh interpreter that imports only the readers. multiprocessing's spawn would also
# import the parent's __main__ (in a run worker, the dagster or grace command: all of Dagster), which
# took 2 to 8 s and 50 MB more per documents step here (bench/formats.py).
_WORKER_CODE = (
    "import sys; from grace.resources.text.isolation import serve_descriptor; serve_descriptor(int(sys.argv[1]))"
)


class ReaderWorker:
    """One isolated reader process; `extract` raises Unreadable for a crash, a time-out (seconds per
    file) or a parser error."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None

    def extract(
        self, data: bytes, name: str, limits: ReadLimits, seconds: float = DEFAULT_SECONDS_PER_FILE
    ) -> ExtractedDocument:
        connection = self._started()
        try:
            connection.send((data, name, limits))
            if not connection.poll(seconds):
                self.close()
                raise Unreadable(
                    f"reading it took over {seconds:g} s (sources[].read_seconds), so it was stopped; "
                    "the file may be damaged or hostile: if it is fine, raise read_seconds in grace.yaml"
                )
            outcome, value = connection.recv()
        except (EOFError, OSError):
            raise Unreadable(self._crash_reason()) from None
        if outcome == "unreadable":
            raise Unreadable(value)
        return value

    def start(self) -> None:
        """Start the worker now, so that it starts while the caller does other work."""
        self._started()

    def _started(self) -> Connection:
        if self._process is not None and self._process.poll() is None and self._connection is not None:
            return self._connection
        self.close()
        # A new interpreter, not a fork: a run worker holds database connections and threads a fork would
        # copy. The child's end of the socket pair is its only inherited descriptor; when this process
        # goes, the child reads EOF and exits.
        parent, child = socket.socketpair()
        with child:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))},
            )
        self._connection = Connection(parent.detach())
        return self._connection

    def _crash_reason(self) -> str:
        process = self._process
        code = None
        if process is not None:
            try:
                code = process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
        self.close()
        if code is not None and code < 0:
            how = f"signal {signal.Signals(-code).name}"
        else:
            how = f"exit code {code}"
        return f"crashed the reader process ({how}); the file is likely damaged: re-save or re-export it"

    def close(self) -> None:
        """Stop the worker; the next extract starts a new one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # stuck in the kernel; it goes when it can
                pass
            self._process = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def __enter__(self) -> ReaderWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve_descriptor(descriptor: int) -> None:
    """The worker's entry point: serve the socket it inherited as descriptor."""
    _serve(Connection(descriptor))


def _serve(connection: Connection) -> None:
    """The worker's loop: one (data, name, limits) in, one outcome out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the run; the run stops the worker
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_ADDRESS_SPACE_BYTES, WORKER_ADDRESS_SPACE_BYTES))
    while True:
        try:
            data, name, limits = connection.recv()
        except (EOFError, OSError):
            return
        connection.send(_outcome(data, name, limits))


def _outcome(data: bytes, name: str, limits: ReadLimits) -> tuple[str, Any]:
    reader = reader_for(name)
    if reader is None:
        return "unreadable", f"no reader for '{name}'"
    try:
        return "ok", reader.read(data, name, limits)
    except Unreadable as error:
        return "unreadable", str(error)
    except MemoryError:
        return "unreadable", "reading it needed more memory than a reader may use; the file may be a bomb"
    except Exception as error:  # a parser's own bug on this file is this file's problem, not the run's
        return "unreadable", f"the {reader.suffixes[0]} reader failed on it ({type(error).__name__}: {error})"

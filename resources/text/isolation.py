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
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

from grace.resources.text.readers.base import ExtractedDocument, ReadLimits, Unreadable
from grace.resources.text.readers.registry import reader_for

# A parser past this much address space fails with MemoryError in the worker instead of
# pushing the machine into swap; real documents need far less (FIELD_NOTES: readers).
WORKER_ADDRESS_SPACE_BYTES = 3 << 30
DEFAULT_SECONDS_PER_FILE = 60.0
# Two, for the machine type's 2 cores: a documents step's own work is light beside PDFium's, and a
# third worker would only wait for a core (bench/formats.py).
READER_PROCESSES = 2
Tag = TypeVar("Tag")
# The worker is a fresh interpreter that imports only the readers. multiprocessing's spawn would also
# import the parent's __main__ (in a run worker, the dagster or grace command: all of Dagster), which
# took 2 to 8 s and 50 MB more per documents step here (bench/formats.py).
_WORKER_CODE = (
    "import sys; from grace.resources.text.isolation import serve_descriptor; serve_descriptor(int(sys.argv[1]))"
)


@dataclass
class _Flight:
    """The file a worker holds: when its time is up, and why it failed if it died as it was handed over."""

    seconds: float
    deadline: float
    failed: str | None = None


class ReaderWorker:
    """One isolated reader process; `extract` raises Unreadable for a crash, a time-out (seconds per
    file, counted from the hand-over) or a parser error. `submit` then `collect` split an extract
    in two, so that the caller works while the worker parses; one file at a time is in flight."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._flight: _Flight | None = None

    def extract(
        self, data: bytes, name: str, limits: ReadLimits, seconds: float = DEFAULT_SECONDS_PER_FILE
    ) -> ExtractedDocument:
        self.submit(data, name, limits, seconds)
        return self.collect()

    def submit(self, data: bytes, name: str, limits: ReadLimits, seconds: float = DEFAULT_SECONDS_PER_FILE) -> None:
        """Hand the worker one file; `collect` returns what became of it."""
        if self._flight is not None:
            raise RuntimeError("the reader worker already has a file: collect it first")
        # The worker waits in recv between files, so this send cannot meet a worker stuck sending.
        connection = self._started()
        flight = _Flight(seconds, time.monotonic() + seconds)
        try:
            connection.send((data, name, limits))
        except OSError:
            flight.failed = self._crash_reason()  # which also stops the worker
        self._flight = flight

    def collect(self) -> ExtractedDocument:
        """The submitted file's document, waiting for it until its time is up."""
        flight, self._flight = self._flight, None
        if flight is None:
            raise RuntimeError("no file was submitted to the reader worker")
        if flight.failed is not None:
            raise Unreadable(flight.failed)
        connection = self._connection
        assert connection is not None
        try:
            if not connection.poll(max(0.0, flight.deadline - time.monotonic())):
                self.close()
                raise Unreadable(
                    f"reading it took over {flight.seconds:g} s (sources[].read_seconds), so it was stopped; "
                    "the file may be damaged or hostile: if it is fine, raise read_seconds in grace.yaml"
                )
            outcome, value = connection.recv()
        except (EOFError, OSError):
            raise Unreadable(self._crash_reason()) from None
        if outcome == "unreadable":
            raise Unreadable(value)
        return value

    @property
    def busy(self) -> bool:
        """A file is submitted and not yet collected."""
        return self._flight is not None

    @property
    def deadline(self) -> float:
        """When the file in flight is out of time (time.monotonic); now if it already failed."""
        assert self._flight is not None
        return time.monotonic() if self._flight.failed else self._flight.deadline

    @property
    def connection(self) -> Connection | None:
        """What to wait on for the file in flight; None if there is nothing to wait for."""
        return None if self._flight is None or self._flight.failed else self._connection

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


class ReaderPool(Generic[Tag]):
    """Reader workers that parse files side by side, one file in flight each, landing in the order
    they finish: on a 2-core machine two PDFs parse at once while the run stores the ones before,
    and a long one holds up no other (bench/formats.py: pdf_ratio)."""

    def __init__(self, size: int = READER_PROCESSES) -> None:
        self.size = max(1, size)
        self._workers = [ReaderWorker() for _ in range(self.size)]
        self._tags: dict[int, Tag] = {}  # by worker index: what the caller handed each file in for

    def start(self, files: int) -> None:
        """Start as many workers as files needs, now, so that they start while the caller does other work."""
        for worker in self._workers[: min(files, self.size)]:
            worker.start()

    @property
    def full(self) -> bool:
        return all(worker.busy for worker in self._workers)

    @property
    def in_flight(self) -> int:
        return sum(worker.busy for worker in self._workers)

    def submit(self, tag: Tag, data: bytes, name: str, limits: ReadLimits, seconds: float) -> None:
        """Hand one file to an idle worker (started if need be); `landed` returns it with tag."""
        index = next((index for index, worker in enumerate(self._workers) if not worker.busy), None)
        if index is None:
            raise RuntimeError("every reader worker has a file: take one that landed first")
        self._workers[index].submit(data, name, limits, seconds)
        self._tags[index] = tag

    def landed(self) -> tuple[Tag, ExtractedDocument | Unreadable]:
        """The first file in flight to finish, fail or run out of time, with its tag."""
        busy = [index for index, worker in enumerate(self._workers) if worker.busy]
        if not busy:
            raise RuntimeError("no file is in flight")
        first_due = min(busy, key=lambda index: self._workers[index].deadline)
        waiting = {self._workers[index].connection: index for index in busy if self._workers[index].connection}
        if len(waiting) < len(busy):  # one failed as it was handed over: nothing to wait for
            chosen = next(index for index in busy if self._workers[index].connection is None)
        else:
            ready = wait(list(waiting), max(0.0, self._workers[first_due].deadline - time.monotonic()))
            chosen = waiting[ready[0]] if ready else first_due
        tag = self._tags.pop(chosen)
        try:
            return tag, self._workers[chosen].collect()
        except Unreadable as error:
            return tag, error

    def close(self) -> None:
        self._tags.clear()
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> ReaderPool[Tag]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

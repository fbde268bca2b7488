"""How far a long step has got, logged every PROGRESS_SECONDS: files a/b, chunks c, x chunks/s, ETA.

A step calls advance() as it finishes each file or batch; a line is written once PROGRESS_SECONDS have
passed since the last one, so a short run logs nothing and a long one logs at a steady pace. A single
long call (an index build) runs through run() in a worker thread while this thread keeps logging: the
logger is only ever called from the thread that made the Progress (Dagster's log handler is not
thread-safe).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

PROGRESS_SECONDS = 10.0  # read when a Progress is made, so a test can shorten it for a real run
SHORTEST_WAIT = 0.01  # run() never polls its worker faster than this, whatever the interval

T = TypeVar("T")


class Progress:
    """Counts a step's files and chunks against their totals (None: unknown) and logs how far it is."""

    def __init__(
        self,
        log: Callable[[str], None],
        step: str,
        total_files: int | None = None,
        total_chunks: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
        expected_seconds: float | None = None,
    ):
        self.log = log
        self.step = step
        self.total_files = total_files
        self.total_chunks = total_chunks
        self.clock = clock
        self.interval = PROGRESS_SECONDS if interval is None else interval
        self.expected_seconds = expected_seconds  # the ETA of work that counts nothing, e.g. an index build
        self.files = 0
        self.chunks = 0
        self.lines = 0
        self.started = self.last_line = clock()

    def advance(self, files: int = 0, chunks: int = 0) -> None:
        """Count finished work, and log a line if the last one is PROGRESS_SECONDS old."""
        self.files += files
        self.chunks += chunks
        if self.clock() - self.last_line >= self.interval:
            self.log_line()

    def log_line(self) -> None:
        self.log(self.line())
        self.lines += 1
        self.last_line = self.clock()

    def finish(self) -> None:
        """A last line, only after a step long enough to have logged: short runs stay quiet."""
        if self.lines:
            self.log(f"{self.step}: done, {self._counts()} in {_duration(self.clock() - self.started)}")

    def run(self, work: Callable[[], T]) -> T:
        """work() in a worker thread, logging from this one until it returns; its exception is raised here."""
        with ThreadPoolExecutor(1, thread_name_prefix=f"progress-{self.step}") as pool:
            future = pool.submit(work)
            while True:
                if self.clock() - self.last_line >= self.interval:  # at once too, when the interval is 0
                    self.log_line()
                wait = max(SHORTEST_WAIT, self.interval - (self.clock() - self.last_line))
                try:
                    return future.result(timeout=wait)
                except TimeoutError:
                    continue

    def line(self) -> str:
        elapsed = self.clock() - self.started
        rate = self._rate(elapsed)
        return f"{self.step}: {self._counts()}{rate}, ETA {self._eta(elapsed)}"

    def _counts(self) -> str:
        parts = []
        if self.total_files is not None or self.files:
            parts.append(f"files {_of(self.files, self.total_files)}")
        if self.total_chunks is not None or self.chunks:
            parts.append(f"chunks {_of(self.chunks, self.total_chunks)}")
        return ", ".join(parts) or f"{_duration(self.clock() - self.started)} elapsed"

    def _rate(self, elapsed: float) -> str:
        if self.chunks:
            return f", {self.chunks / elapsed:,.1f} chunks/s" if elapsed > 0 else ""
        if self.files:
            return f", {self.files / elapsed:,.1f} files/s" if elapsed > 0 else ""
        return ""

    def _eta(self, elapsed: float) -> str:
        """From the chunks' pace if their total is known, else the files', else the expected duration."""
        for done, total in ((self.chunks, self.total_chunks), (self.files, self.total_files)):
            if total is not None and done and elapsed > 0:
                return _duration(max(0, total - done) * elapsed / done)
        if self.expected_seconds is not None:
            left = self.expected_seconds - elapsed
            return _duration(left) if left > 0 else f"overdue by {_duration(-left)}"
        return "unknown"


def _of(done: int, total: int | None) -> str:
    return f"{done:,}" if total is None else f"{done:,}/{total:,}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"

"""RSS over time of every long-lived process in one process group, from /proc (Linux), for bench/soak.py.

A process is known by pid and start time (so a reused pid is a new process) and named by its command
line. Long-lived means sampled both in the first and in the last sample: run workers, which the
forking launcher forks per run and which live a few seconds, drop out by that rule. CPU time counts
a process's own and its reaped children's (the forkserver reaps the run workers), so the long-lived
processes' CPU between two samples is the whole group's, bar workers still running.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Substrings of a command line, first match wins: the names the soak's report uses.
NAMES = [
    ("dagster dev", "grace dev (dagster dev)"),
    ("grace.cli.main serve", "http api (grace serve)"),
    ("dagster_webserver", "dagster-webserver"),
    ("dagster._daemon run", "dagster-daemon"),
    ("dagster code-server", "code server proxy"),
    ("dagster api grpc", "code server (grpc)"),
    ("multiprocessing.forkserver", "run forkserver"),
    ("multiprocessing.resource_tracker", "resource tracker"),
]
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
EDGE_SAMPLES = 3  # start and end are medians of this many samples: one sample catches a GC's or a request's spike


@dataclass
class Process:
    pid: int
    name: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (monotonic s, RSS kB, CPU ticks)


def process_name(cmdline: str) -> str:
    for marker, name in NAMES:
        if marker in cmdline:
            return name
    return cmdline[:60]


def group_members(group: int) -> dict[tuple[int, str], tuple[str, int]]:
    """{(pid, start time in clock ticks): (command line, CPU ticks with reaped children's)} of every live
    process whose process group is group."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # it ended while we looked
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces and parentheses
        if fields[0] != "Z" and int(fields[2]) == group:
            found[(int(entry.name), fields[19])] = (cmdline, sum(int(ticks) for ticks in fields[11:15]))
    return found


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Samples the group's RSS every `every` seconds on a thread, between start() and stop()."""

    def __init__(self, group: int, every: float):
        self.group, self.every = group, every
        self.processes: dict[tuple[int, str], Process] = {}
        self.rounds: list[set[tuple[int, str]]] = []  # which processes each sample saw
        self.load: list[float] = []  # the machine's 1-minute load average at each sample
        self.first_uptime = 0.0  # seconds since boot at the first sample
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Take a last sample and stop; re-raises whatever made the sampling thread fail."""
        self._stopping.set()
        self._thread.join()
        if self._failure is not None:
            raise RuntimeError("the RSS sampler failed") from self._failure
        self.sample()

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                self.sample()
                self._stopping.wait(self.every)
        except BaseException as error:  # noqa: BLE001 (handed to stop(), which raises it)
            self._failure = error

    def sample(self) -> None:
        now, seen = time.monotonic(), set()
        if not self.rounds:
            self.first_uptime = float(Path("/proc/uptime").read_text().split()[0])
        for key, (cmdline, ticks) in group_members(self.group).items():
            kilobytes = rss_kb(key[0])
            if kilobytes is None:
                continue
            process = self.processes.setdefault(key, Process(key[0], process_name(cmdline)))
            process.samples.append((now, kilobytes, ticks))
            seen.add(key)
        self.rounds.append(seen)
        self.load.append(os.getloadavg()[0])

    def long_lived(self) -> list[Process]:
        """Processes in the first and the last sample, by name."""
        if not self.rounds:
            return []
        keys = self.rounds[0] & self.rounds[-1]
        return sorted((self.processes[key] for key in keys), key=lambda process: (process.name, process.pid))

    def report(self) -> dict[str, dict]:
        """{name: {pid, start, peak, end (MB), growth_pct, cpu_s, samples}}; a name held twice gets its pid appended."""
        chosen = self.long_lived()
        names = [process.name for process in chosen]
        report = {}
        for process in chosen:
            values = [kilobytes for _when, kilobytes, _ticks in process.samples]
            start = statistics.median(values[:EDGE_SAMPLES])
            end = statistics.median(values[-EDGE_SAMPLES:])
            name = process.name if names.count(process.name) == 1 else f"{process.name} [{process.pid}]"
            report[name] = {
                "pid": process.pid,
                "start": round(start / 1024, 1),
                "peak": round(max(values) / 1024, 1),
                "end": round(end / 1024, 1),
                "growth_pct": round((end - start) / start * 100, 1),
                "cpu_s": round((process.samples[-1][2] - process.samples[0][2]) / TICKS_PER_SECOND, 1),
                "samples": len(values),
            }
        return report

    def vanished(self, older_than: float) -> list[str]:
        """Processes in the first sample, already older_than seconds then, but not in the last: a server that
        died or was restarted. (A younger one is most likely a run worker.)"""
        if not self.rounds:
            return []
        born_before = (self.first_uptime - older_than) * TICKS_PER_SECOND  # in clock ticks since boot
        gone = [key for key in self.rounds[0] - self.rounds[-1] if int(key[1]) < born_before]
        return sorted(f"{self.processes[key].name} [{key[0]}]" for key in gone)

    def short_lived(self) -> int:
        """How many processes were seen but were not long-lived (run workers, mostly)."""
        return len(self.processes) - len(self.long_lived())

    def cpu_percent(self) -> float:
        """CPU the group used over the sampled time, in % of one core."""
        chosen = self.long_lived()
        if not chosen or len(chosen[0].samples) < 2:
            return 0.0
        ticks = sum(process.samples[-1][2] - process.samples[0][2] for process in chosen)
        wall = chosen[0].samples[-1][0] - chosen[0].samples[0][0]
        return round(ticks / TICKS_PER_SECOND / wall * 100, 1)

    def mean_load(self) -> float:
        return round(statistics.mean(self.load), 2) if self.load else 0.0

"""The soak's steady churn: file creates, edits and deletes in a watched folder and routed tasks, each
followed through the HTTP API until it took effect; for bench/soak.py.

Every create and edit writes a text no other write had, led by a unique marker; it is searchable once a
search for that whole text returns a hit of that file whose text holds the marker. A delete is gone once
that search returns no hit of the file.

The probe is the whole text because each file is one chunk: its own vector is the query's (score 1.0),
so only a write that is not searchable can miss. A probe of the first 14 words was no such proof: in a
30-minute soak two files whose chunks were indexed within 2 s of the write stayed out of the top 3 for
10 minutes (scores 0.44 and 0.34 against 0.47 for other files' chunks of random words).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from grace.http.client import ApiUnavailable, request_json

# Each write in flight is searched for every 0.5 s, backing off to 5% of its age (at most 1 s, from 20 s): a
# search costs the API server ~37 ms of CPU here (2 vCPUs), so polling every 0.25 s took a third of a core.
POLL_SECONDS, MAX_POLL_SECONDS, POLL_SHARE_OF_AGE = 0.5, 1.0, 0.05
TOP_K = 3
MIN_FILES, MAX_FILES = 8, 40  # below MIN_FILES every operation creates, at MAX_FILES none does
WEIGHTS = {"create": 0.35, "edit": 0.40, "delete": 0.25}
SLOW_SECONDS = 30.0  # a write slower than this is named in the report, so it can be traced in the logs


class Api:
    """The deployment's HTTP API; every failed request is an error, kept with what was asked."""

    def __init__(self, url: str, errors: list[str]):
        self.url, self.errors = url, errors
        self.requests = 0

    def call(self, method: str, path: str, body: dict | None = None, expect: int = 200) -> dict | None:
        """The decoded answer, or None after recording why there is none."""
        self.requests += 1
        try:
            status, answer = request_json(self.url, method, path, body, connect_timeout=2.0, read_timeout=30.0)
        except ApiUnavailable as error:
            self.errors.append(f"http: {error}")
            return None
        if status != expect or not isinstance(answer, dict):
            self.errors.append(f"http: {method} {path} answered {status}: {str(answer)[:200]}")
            return None
        return answer


@dataclass
class Write:
    """One file operation still being followed."""

    name: str
    kind: str  # create, edit or delete
    text: str  # for a delete, the text the file last had
    marker: str
    at: float  # time.monotonic() of the write
    measured: bool  # issued after the warm-up: its latency counts
    next_poll: float = 0.0


class FileChurn:
    """Creates, edits and deletes files in inbox at the caller's pace, and follows each until it shows."""

    def __init__(self, inbox: Path, api: Api, errors: list[str], texts: Iterator[str], seed: int, timeout: float):
        self.inbox, self.api, self.errors, self.texts, self.timeout = inbox, api, errors, texts, timeout
        self.rng = random.Random(seed)
        self.settled: dict[str, str] = {}  # file name -> its text, searchable as written
        self.pending: list[Write] = []
        self.searchable: list[float] = []  # seconds from a measured create or edit to searchable
        self.gone: list[float] = []  # seconds from a measured delete to out of search
        self.slow: list[str] = []  # writes that took effect after SLOW_SECONDS: what, when, how long
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.serial = 0

    def operate(self, measured: bool) -> None:
        """One create, edit or delete, chosen at random among what the folder allows now."""
        busy = {write.name for write in self.pending}
        idle = sorted(name for name in self.settled if name not in busy)
        live = len(self.settled) + sum(write.kind == "create" for write in self.pending)
        if live < MIN_FILES or not idle:
            kind = "create"
        else:
            allowed = {kind: weight for kind, weight in WEIGHTS.items() if kind != "create" or live < MAX_FILES}
            kind = self.rng.choices(list(allowed), weights=list(allowed.values()))[0]
        self.serial += 1
        marker = f"marker{self.serial:05d}x{self.rng.randrange(16**6):06x}"
        if kind == "create":
            name = f"note{self.serial:05d}.txt"
            text = f"Note {marker}. {next(self.texts)}"
        else:
            name = self.rng.choice(idle)
            text = self.settled.pop(name)
            if kind == "edit":  # new words as well as a new marker: the file's one chunk is re-embedded
                text = f"Note {marker}. {next(self.texts)}"
        path = self.inbox / name
        if kind == "delete":
            path.unlink()
        else:
            path.write_text(text)
        now = time.monotonic()
        self.pending.append(Write(name, kind, text, marker, now, measured, now + POLL_SECONDS))
        self.counts[kind] += 1

    def next_poll(self) -> float:
        return min((write.next_poll for write in self.pending), default=float("inf"))

    def poll_one(self) -> None:
        """One search, for the write whose turn is oldest if it has come: settle it if it took effect, fail it
        if too late. One at a time, so that slow searches on a busy machine do not hold up the churn's pace."""
        write = min(self.pending, key=lambda write: write.next_poll, default=None)
        if write is None or time.monotonic() < write.next_poll:
            return
        hits = self._hits(write.text)
        done = time.monotonic()
        if hits is not None and self._took_effect(write, hits):
            self.pending.remove(write)
            if write.measured:
                (self.gone if write.kind == "delete" else self.searchable).append(done - write.at)
            if write.kind != "delete":
                self.settled[write.name] = write.text
            if done - write.at > SLOW_SECONDS:
                self.slow.append(f"{self._describe(write)} took {done - write.at:.0f} s")
        elif done - write.at > self.timeout:
            self.pending.remove(write)
            verb = "still searchable" if write.kind == "delete" else "not searchable"
            self.errors.append(f"{self._describe(write)}: {verb} after {self.timeout:.0f} s")
            self.counts["lost"] += 1  # never touched again: its state is unknown
        else:
            write.next_poll = done + min(MAX_POLL_SECONDS, max(POLL_SECONDS, POLL_SHARE_OF_AGE * (done - write.at)))

    def _describe(self, write: Write) -> str:
        wall = time.strftime("%H:%M:%S", time.localtime(time.time() - (time.monotonic() - write.at)))
        return f"{write.kind} of {write.name} ({write.marker}) at {wall}, {write.at - self.started:.0f} s in"

    def _hits(self, text: str) -> list[dict] | None:
        self.counts["searches"] += 1
        answer = self.api.call("POST", "/api/vectors/search", {"query": text, "top_k": TOP_K})
        return None if answer is None else answer["results"]

    @staticmethod
    def _took_effect(write: Write, hits: list[dict]) -> bool:
        mine = [hit for hit in hits if hit["path"] == write.name]
        if write.kind == "delete":
            return not mine
        return any(write.marker in hit["text"] for hit in mine)


class TaskChurn:
    """Submits echo tasks through POST /api/tasks and reads their records back at the end."""

    def __init__(self, api: Api):
        self.api = api
        self.submitted: list[tuple[str, bool]] = []  # (task id, measured)
        self.ended: dict[str, dict] = {}  # records of the tasks seen succeeded or failed: they never change again

    def submit(self, measured: bool) -> None:
        payload = {"message": f"soak task {len(self.submitted)}"}
        answer = self.api.call("POST", "/api/tasks", {"type": "echo", "origin": "soak", "payload": payload}, 202)
        if answer is not None:
            self.submitted.append((answer["task_id"], measured))

    def records(self) -> list[tuple[dict, bool]]:
        """(task record, measured) of every submitted task the API could read."""
        found = []
        for task_id, measured in self.submitted:
            record = self.ended.get(task_id) or self.api.call("GET", f"/api/tasks/{task_id}")
            if record is not None:
                found.append((record, measured))
                if record["status"] in ("succeeded", "failed"):
                    self.ended[task_id] = record
        return found

    def open_count(self) -> int:
        """Tasks not yet succeeded or failed."""
        return sum(record["status"] not in ("succeeded", "failed") for record, _measured in self.records())

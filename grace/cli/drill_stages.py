"""The drill's stages, each through the HTTP API as the seed's curl commands drive it.

A stage returns or raises StageFailed (any other exception fails it too, with its type); a stage
whose prerequisite failed is not run, and fails as "skipped: <stage> failed".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grace.http.client import request_json

# The seed's own test data (its README's curl commands).
SEED_DOCUMENT = {
    "content": "Grace is an autonomous AI system with full Layer 1-4 integration",
    "title": "Test Document",
    "artifact_type": "document",
    "actor": "test_user",
}
SEED_QUERY = "What is Grace?"
SEED_INTENT = {"goal": "Test goal", "domain": "test", "sla_ms": 30000, "priority": "normal"}
INTENT_QUOTA = 12
CAPACITY = 50

STAGES = ["ingest", "wait_indexed", "search", "submit_intent", "routing_stats", "rotate_keys", "decrypt"]
NEEDS = {
    "wait_indexed": "ingest",
    "search": "wait_indexed",
    "routing_stats": "submit_intent",
    "rotate_keys": "wait_indexed",  # rewrapping is only shown with rows under the old key
    "decrypt": "rotate_keys",
}
POLL_SECONDS = 0.2
REQUEST_SECONDS = 30.0


class StageFailed(Exception):
    """A stage's check did not hold; the message says what was expected and what came back."""


class Drill:
    """The stages against one running API; what a stage learns (ids, key versions) is kept for the next."""

    def __init__(self, api_url: str, manifest: Path, timeout: float):
        self.api, self.manifest, self.timeout = api_url, manifest, timeout
        self.document: dict[str, Any] = {}
        self.task_id = ""
        self.primary_before: int | None = None
        self.intent_id = f"drill_{uuid.uuid4().hex[:12]}"

    def run_all(self, start_problem: str | None = None) -> list[dict[str, Any]]:
        """Every stage in order: [{"name", "ok", "seconds"[, "error"]}]. With start_problem, none can run."""
        results: dict[str, dict[str, Any]] = {}
        for name in STAGES:
            needed = NEEDS.get(name)
            if start_problem is not None:
                results[name] = {"name": name, "ok": False, "seconds": 0.0, "error": start_problem}
                start_problem = "skipped: grace dev did not start"
            elif needed and not results[needed]["ok"]:
                results[name] = {"name": name, "ok": False, "seconds": 0.0, "error": f"skipped: {needed} failed"}
            else:
                results[name] = self.run_stage(name, getattr(self, name))
        return list(results.values())

    def run_stage(self, name: str, stage: Callable[[], None]) -> dict[str, Any]:
        started = time.monotonic()
        try:
            stage()
            error = None
        except StageFailed as failure:
            error = str(failure)
        except Exception as failure:  # noqa: BLE001 (a stage that crashes is a failed stage, and the drill goes on)
            error = f"{type(failure).__name__}: {failure}"
        result = {"name": name, "ok": error is None, "seconds": round(time.monotonic() - started, 3)}
        return {**result, "error": error} if error else result

    # --- stages ------------------------------------------------------------------------------

    def ingest(self) -> None:
        self.document = self.expect(201, "POST", "/api/knowledge/ingest", SEED_DOCUMENT)
        if not self.document.get("id"):
            raise StageFailed(f"POST /api/knowledge/ingest answered without an id: {self.document}")

    def wait_indexed(self) -> None:
        path = f"/api/knowledge/{self.document['id']}"
        self.until(lambda: (found := self.expect(200, "GET", path))["searchable"] and found["indexed"], path)
        stats = "/api/vectors/index/stats"
        self.until(lambda: self.expect(200, "GET", stats)["index_coverage"] == 1.0, f"{stats} index_coverage 1.0")

    def search(self) -> None:
        found = self.expect(200, "POST", "/api/vectors/search", {"query": SEED_QUERY, "top_k": 5})
        hits = found["results"]
        if not hits or hits[0]["path"] != self.document["path"]:
            top = hits[0]["path"] if hits else "no hit at all"
            raise StageFailed(f"search {SEED_QUERY!r}: the top hit is {top}, not {self.document['path']}")

    def submit_intent(self) -> None:
        accepted = self.expect(202, "POST", "/api/intents/submit", {"intent_id": self.intent_id, **SEED_INTENT})
        if accepted.get("origin") != "intent":
            raise StageFailed(f"the intent was accepted with origin {accepted.get('origin')!r}, not 'intent'")
        self.task_id = accepted["task_id"]
        self.wait_for_task(self.task_id)

    def routing_stats(self) -> None:
        stats = self.expect(200, "GET", "/api/htm/routing/stats")
        intent = stats["origins"].get("intent")
        if intent is None:
            raise StageFailed(f"routing stats list no origin 'intent': {sorted(stats['origins'])}")
        expected = {"quota": INTENT_QUOTA, "succeeded": 1}
        found = {key: intent.get(key) for key in expected}
        if found != expected or stats["capacity"] != CAPACITY:
            raise StageFailed(
                f"routing stats: intent {found}, capacity {stats['capacity']}; expected {expected}, capacity {CAPACITY}"
            )

    def rotate_keys(self) -> None:
        before = self.expect(200, "GET", "/api/keys/status")
        if before["primary"] is None or not _rows(before):
            raise StageFailed(f"no text under any key before rotating: {_versions(before)}")
        task = {"type": "rotate_keys", "origin": "drill", "payload": {"force": True}}
        self.wait_for_task(self.expect(202, "POST", "/api/tasks", task)["task_id"])
        after = self.expect(200, "GET", "/api/keys/status")
        left = {version: rows for version, rows in _rows(after).items() if version != after["primary"] and rows}
        if after["primary"] is None or after["primary"] <= before["primary"] or left:
            raise StageFailed(
                f"after rotate_keys: primary v{after['primary']} (was v{before['primary']}), rows left under "
                f"older versions {left}; expected a new primary and every row rewrapped to it"
            )
        self.primary_before = before["primary"]

    def decrypt(self) -> None:
        from grace.api import key_status

        found = self.expect(200, "POST", "/api/vectors/search", {"query": SEED_QUERY, "top_k": 5})
        texts = [hit["text"] for hit in found["results"] if hit["path"] == self.document["path"]]
        if texts != [SEED_DOCUMENT["content"]]:
            raise StageFailed(f"the document's text read back as {texts!r}, not [{SEED_DOCUMENT['content']!r}]")
        status = key_status(self.manifest)  # from the store itself, with the KEK: not the API's word for it
        elsewhere = {version: rows for version, rows in _rows(status).items() if version != status["primary"]}
        if status["primary"] == self.primary_before or any(elsewhere.values()):
            raise StageFailed(f"the store's rows are not all under the new primary: {_versions(status)}")

    # --- helpers -----------------------------------------------------------------------------

    def expect(self, status: int, method: str, path: str, body: dict | None = None) -> Any:
        answered, found = request_json(self.api, method, path, body, read_timeout=REQUEST_SECONDS)
        if answered != status:
            raise StageFailed(f"{method} {path} answered {answered}, not {status}: {found}")
        return found

    def until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll condition until it holds; StageFailed after self.timeout seconds (it is asked at least once)."""
        deadline = time.monotonic() + self.timeout
        while not condition():
            if time.monotonic() > deadline:
                raise StageFailed(f"{what}: not reached within --timeout {self.timeout:g} s")
            time.sleep(POLL_SECONDS)

    def wait_for_task(self, task_id: str) -> None:
        path = f"/api/tasks/{task_id}"

        def ended() -> bool:
            task = self.expect(200, "GET", path)
            if task["status"] == "failed":
                raise StageFailed(f"task {task_id} failed: {task['error']}")
            return task["status"] == "succeeded"

        self.until(ended, f"task {task_id} succeeded")


def _rows(status: dict) -> dict[int, int]:
    return {version["version"]: version["rows"] for version in status["versions"]}


def _versions(status: dict) -> str:
    return ", ".join(f"v{v['version']} {v['status']} {v['rows']} rows" for v in status["versions"]) or "none"

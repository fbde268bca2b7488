"""The seed's curl commands, run as written (host and port aside) with the real curl, against a real `grace dev`
serving the HTTP API beside Dagster, on the real model: ingest, wait the seed's 3 seconds (and longer on a
loaded machine: bench/freshness.py measures the latency), the stats show the document indexed with
index_coverage 1.0, and a search finds it; an intent is routed and answered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from grace.core.manifest import load_manifest
from grace.http.client import pid_alive, read_discovery
from tests.helpers.api_server import call
from tests.helpers.daemon import wait_for
from tests.helpers.devserver import DevServer, free_port

# Copied from the seed (/work/shared/seed), comments and all; only localhost:8000 is replaced.
SEED_INGEST_FIRST = """
# Ingest content
curl -X POST http://localhost:8000/api/knowledge/ingest \\
  -d '{"content": "Test content for embedding", "title": "Test"}'
"""
SEED_STATS = """
# Check vector stats (should show embeddings)
curl http://localhost:8000/api/vectors/index/stats
"""
SEED_INTENT = """
# Submit intent
curl -X POST http://localhost:8000/api/intents/submit \\
  -d '{
    "intent_id": "test_intent",
    "goal": "Test goal",
    "domain": "test",
    "sla_ms": 30000,
    "priority": "normal"
  }'
"""
SEED_ROUTING = """
# Check routing stats
curl http://localhost:8000/api/htm/routing/stats
"""
SEED_INGEST_SECOND = """
# 2. Ingest content
curl -X POST http://localhost:8000/api/knowledge/ingest \\
  -H "Content-Type: application/json" \\
  -d '{
    "content": "Grace is an autonomous AI system with full Layer 1-4 integration",
    "title": "Test Document",
    "artifact_type": "document",
    "actor": "test_user"
  }'
"""
SEED_SEARCH = """
# 5. Test semantic search
curl -X POST http://localhost:8000/api/vectors/search \\
  -H "Content-Type: application/json" \\
  -d '{
    "query": "What is Grace?",
    "top_k": 5
  }'
"""
SEED_WAIT_SECONDS = 3  # "Wait 3 seconds for processing"
MANIFEST = (
    "state_dir: state\nsources:\n  - {name: documents, path: inbox}\n"
    "index: {shards: 2, trees: 10}\nembedding: {backend: onnx-int8}\n"
    "routing:\n  routes: {test: search, search: search}\n"
)


def curl(commands: str, port: int) -> dict:
    """Run the seed's lines with bash, as a user pastes them; the JSON that curl printed."""
    done = subprocess.run(
        ["bash", "-c", commands.replace("localhost:8000", f"localhost:{port}")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def emptied(url: str, relative: str, inbox: Path) -> None:
    """Delete an ingested file and wait until the store and index hold nothing: the next seed step starts clean."""
    (inbox / relative).unlink()

    def clean() -> bool:
        stats = call(url, "GET", "/api/vectors/index/stats").json
        return stats["total_embeddings"] == 0 and stats["tombstoned"] == 0 and stats["index_coverage"] == 1.0

    wait_for(clean, timeout=60, every=0.2)


def stats_after_the_wait(port: int, expected: dict) -> dict:
    """The seed's wait, then its stats; when they do not show `expected` yet, the stats once they do.

    How soon an ingest is indexed depends on the machine's load: bench/freshness.py measures it (the
    seed's 3 s is its target). Here the sequence must hold, and the test prints how long it really took."""
    written = time.monotonic()
    time.sleep(SEED_WAIT_SECONDS)
    stats = curl(SEED_STATS, port)
    if {key: stats[key] for key in expected} != expected:
        stats = wait_for(
            lambda: {key: (now := curl(SEED_STATS, port))[key] for key in expected} == expected and now, 60, every=0.2
        )
        late = time.monotonic() - written
        print(f"the stats showed {expected} {late:.1f} s after the ingest, not {SEED_WAIT_SECONDS}")
    return stats


def gone(pid: int) -> bool:
    """Dead, or a zombie nobody reaped yet."""
    if not pid_alive(pid):
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def test_the_seed_curl_sequences_hold(tmp_path, onnx_model_cache):
    manifest_path = tmp_path / "grace.yaml"
    manifest_path.write_text(MANIFEST)
    manifest = load_manifest(manifest_path)
    inbox = manifest.sources[0].path
    api_port = free_port()
    url = f"http://127.0.0.1:{api_port}"
    log = tmp_path / "grace-dev.log"
    server = DevServer(manifest_path, tmp_path / "dagster_home", free_port(), log, api_port=api_port)
    try:
        server.start()
        assert f"API on http://127.0.0.1:{api_port}" in log.read_text()
        discovery = read_discovery(manifest)
        assert discovery["url"] == url and discovery["token_required"] is False

        # The folder's watcher (and its pusher) start with the sensor's first tick; a warm-up file, ingested
        # through the API and then deleted, makes sure that tick has happened before the seed's clock runs.
        warm = call(url, "POST", "/api/knowledge/ingest", {"content": "Warm-up note about spring.", "title": "w"})
        wait_for(lambda: call(url, "GET", f"/api/knowledge/{warm.json['id']}").json["indexed"], timeout=120, every=0.2)
        emptied(url, warm.json["path"], inbox)

        first = curl(SEED_INGEST_FIRST, api_port)
        assert first["status"] == "written" and first["path"].startswith("api/test-")
        stats_after_the_wait(api_port, {"total_vectors": 1, "indexed_embeddings": 1, "index_coverage": 1.0})
        emptied(url, first["path"], inbox)

        accepted = curl(SEED_INTENT, api_port)
        assert accepted["task_id"] == "test_intent" and accepted["origin"] == "intent"
        routing = curl(SEED_ROUTING, api_port)["origins"]["intent"]
        assert routing["quota_used"] == f"{routing['current_count']}/12" and 0 <= routing["utilization"] <= 1
        task = wait_for(
            lambda: (found := call(url, "GET", "/api/tasks/test_intent").json)["status"] == "succeeded" and found,
            timeout=90,
            every=0.5,
        )
        assert task["result"]["query"] == "Test goal" and task["sla_met"] is not None

        second = curl(SEED_INGEST_SECOND, api_port)
        seed_expects = {"total_vectors": 1, "indexed_embeddings": 1, "total_embeddings": 1, "index_coverage": 1.0}
        assert stats_after_the_wait(api_port, seed_expects)["backend"] == "annoy"
        found = curl(SEED_SEARCH, api_port)["results"]
        assert found[0]["path"] == second["path"] and found[0]["similarity"] > 0.3, found

        # The API child dies with grace dev, even when grace dev dies without a word to its children.
        server.signal_member(server.process.pid, signal.SIGKILL)
        wait_for(lambda: gone(discovery["pid"]), timeout=15, every=0.1)
    except BaseException:
        print(log.read_text()[-5000:])
        raise
    finally:
        server.stop()
    assert not os.path.exists(manifest.state_dir / "api.json"), "the API removed its discovery file as it stopped"

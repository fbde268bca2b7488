"""executor: celery: a real ingest run whose steps execute on a dagster-celery worker, through the local RabbitMQ."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import kombu
import pytest
from dagster import DagsterEventType, DagsterInstance, build_sensor_context, execute_job
from dagster._core.definitions.reconstruct import ReconstructableRepository
from sqlalchemy import func, select

from grace.core.manifest import load_manifest
from grace.core.names import PARTITION_TAG
from grace.definitions import build_definitions
from grace.deploy.instance import render_instance
from grace.deploy.process_group import stop_group
from grace.resources.db.schema import shard_leases
from grace.resources.embedding.embedder import OFFLINE_ENVIRONMENT
from grace.resources.index.search import Searcher, index_stats
from grace.resources.runs.lease import ShardLeases

BROKER = "pyamqp://guest@127.0.0.1:5672//"
TEST_KEK_VARIABLE = "GRACE_CELERY_TEST_KEK"  # the worker inherits it, as cluster machines share keys.kek
WORKER_START_SECONDS = 60
STEPS = ["documents", "chunks", "embeddings", "vector_index", "vector_index_index_covers_every_embedding"]
FILES = {
    "whales.txt": "Blue whales are the largest animals ever known; they feed on krill in cold oceans.",
    "bread.md": "Sourdough bread rises slowly because wild yeast and lactic bacteria ferment the dough.",
    "rockets.txt": "A rocket engine burns fuel and oxidizer and throws the exhaust backwards to climb.",
}


def manifest_text(database_url: str, queue: str) -> str:
    return (
        f"state_dir: state\ndatabase:\n  url: {database_url}\n"
        "sources:\n  - name: docs\n    path: inbox\n"
        "index:\n  shards: 1\n  trees: 10\nwatch:\n  events: false\n"
        f"keys:\n  kek: env:{TEST_KEK_VARIABLE}\n"
        f"executor:\n  kind: celery\n  broker: {BROKER}\n  queue: {queue}\n"
    )


@contextmanager
def celery_worker(folder: Path, queue: str) -> Iterator[int]:
    """A dagster-celery worker started as docs/cluster.md says, in its own process group; yields the group id.

    Its queue is the test's own, so no other worker takes these steps and this one takes no other's.
    """
    config = folder / "celery.yaml"
    config.write_text(
        f"execution:\n  config:\n    broker: {BROKER}\n    config_source: {{task_default_queue: {queue}}}\n"
    )
    log = folder / "worker.log"
    command = [
        str(Path(sys.executable).with_name("dagster-celery")),
        *("worker", "start", "-A", "dagster_celery.app", "-y", str(config), "-q", queue, "-n", queue),
        *("--", "--concurrency=1"),
    ]
    # The CLI starts `celery` from PATH, as it would in an activated virtualenv.
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with log.open("wb") as output:
        worker = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=environment
        )
    try:
        deadline = time.monotonic() + WORKER_START_SECONDS
        while b" ready." not in log.read_bytes():
            assert worker.poll() is None, f"the worker exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the worker never got ready: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        yield worker.pid
    finally:
        stop_group(worker, grace_seconds=15)  # the CLI and the celery worker it runs: none outlives the test
        with kombu.Connection(BROKER) as connection:
            connection.default_channel.queue_delete(queue)  # the broker keeps no trace of the test


# dagster-celery registers its task on the app once per step it sends; Celery keeps the first.
@pytest.mark.filterwarnings("ignore:Task name 'execute_plan' is already registered")
def test_an_ingest_run_executes_its_steps_on_a_celery_worker(tmp_path, postgres_url, onnx_model_cache, monkeypatch):
    queue = f"grace_test_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv(TEST_KEK_VARIABLE, base64.b64encode(os.urandom(32)).decode())
    config = tmp_path / "grace.yaml"
    config.write_text(manifest_text(postgres_url, queue))
    manifest = load_manifest(config)
    home = tmp_path / "dagster_home"
    render_instance(manifest, home, tmp_path)  # the instance on PostgreSQL: the worker records into it too
    for name, value in {**OFFLINE_ENVIRONMENT, "DAGSTER_HOME": str(home), "GRACE_CONFIG": str(config)}.items():
        monkeypatch.setenv(name, value)
    manifest.sources[0].path.mkdir()
    for name, text in FILES.items():
        (manifest.sources[0].path / name).write_text(text)
    defs = build_definitions(manifest)
    started = time.monotonic()
    with DagsterInstance.get() as instance, celery_worker(tmp_path, queue) as worker_group:
        worker_ready = time.monotonic() - started
        context = build_sensor_context(instance=instance, resources=defs.resources)
        [request] = defs.resolve_sensor_def("watch_docs")(context).run_requests
        # Loaded by module and attribute, as the code server names it to the worker.
        job = ReconstructableRepository.for_module("grace.definitions", "defs", str(tmp_path)).get_reconstructable_job(
            "ingest"
        )
        # Not `with`: that would build the job's resources here, to load outputs, and take the shard's lease.
        result = execute_job(job, instance, tags={**request.tags, PARTITION_TAG: request.partition_key})
        ingest_seconds = time.monotonic() - started - worker_ready
        assert result.success, [event.message for event in result.all_events if event.is_failure]
        starts = {event.step_key: event.pid for event in result.all_events if event.is_step_start}
        assert sorted(starts) == sorted(STEPS)
        # Every step ran in the worker's processes, none in this one.
        assert all(os.getpgid(pid) == worker_group != os.getpgrp() for pid in starts.values()), starts
        handed_over = [
            event.message
            for event in instance.all_logs(result.run_id, of_type=DagsterEventType.ENGINE_EVENT)
            if "in celery worker" in event.message
        ]
        assert len(handed_over) == len(STEPS), handed_over
    store, index, embedder = (defs.resources[key].get() for key in ("store", "vector_index", "embedder"))
    [hit] = Searcher(store, index, embedder).search("huge sea mammals eating krill", k=1)
    assert hit.path == "whales.txt"
    totals = index_stats(store, index, embedder.model_id)["total"]
    assert totals["index_coverage"] == 1.0 and totals["total_embeddings"] == len(FILES)
    # Each step took the shard's lease in its own process and gave it back: nothing is left held.
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(shard_leases)).scalar_one() == 0
    assert ShardLeases(store.engine).heartbeats() == {}
    print(f"worker ready in {worker_ready:.1f}s; ingest run through Celery in {ingest_seconds:.1f}s")


@pytest.fixture(autouse=True)
def _broker_answers():
    try:
        with kombu.Connection(BROKER, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as error:  # the test needs the real broker; say so rather than hang
        pytest.fail(f"RabbitMQ does not answer at {BROKER}: {error}")

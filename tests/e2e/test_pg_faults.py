"""Faults under a real `grace dev` whose Dagster instance and store are both on PostgreSQL (database: in grace.yaml):
connections terminated mid-run, the server restarted mid-run, and the whole daemon SIGKILLed mid-burst and started
again on the same state. Each must end exactly as a clean in-process run of the same files, with no run in flight.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy
from dagster import DagsterInstance, DagsterRun, RunsFilter
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from grace.core.manifest import load_manifest
from grace.resources.index.search import index_stats
from grace.resources.wiring.dagster_resources import build_resources
from tests.helpers.daemon import embedding_run, graphql, wait_for
from tests.helpers.devserver import DevServer, free_port
from tests.helpers.harness import Deployment, assert_same_state, manifest_text
from tests.helpers.postgres import postgres_answers

FILES = 150  # ~100 tokens each, one chunk: a few seconds of embedding per shard run on the onnx-int8 model
WORDS = "river glacier harbor orchard violin comet lantern meadow falcon quartz ember willow canyon nebula".split()
FIRST_BURST = 10  # indexed before the daemon is killed mid-way through the rest
OPTIONS = {"shards": 2, "embedding_backend": "onnx-int8", "max_bytes": "1MB", "events": True}
PG_CTLCLUSTER = shutil.which("pg_ctlcluster")
RUNS_QUERY = "{ runsOrError { __typename } }"

# Applied once an ingest run embeds: (the running server, the store's current totals) -> the server to wait on.
Fault = Callable[[DevServer, Callable[[], dict]], DevServer]


def corpus() -> dict[str, str]:
    generator = random.Random(12)
    return {
        f"file-{index:03d}.txt": f"Record {index}. " + " ".join(generator.choice(WORDS) for _ in range(80))
        for index in range(FILES)
    }


@pytest.fixture(scope="module")
def clean_state(tmp_path_factory, onnx_model_cache) -> dict:
    """What every faulted deployment must reach: the same files synced in process on SQLite, once per module."""
    root = tmp_path_factory.mktemp("clean")
    deployment = Deployment(root, f"sqlite:///{root / 'clean.db'}", None, **OPTIONS)
    for name, text in corpus().items():
        deployment.drop(name, text)
    deployment.sync()
    state = deployment.snapshot()
    assert state["stats"]["documents_active"] == FILES and state["stats"]["index_coverage"] == 1.0
    deployment.store.dispose()
    return state


def faulted_deployment_ends_clean(
    root: Path, database: str, postgres_url: str, clean_state: dict, fault: Fault, indexed_first: int = 0
) -> None:
    """Start grace dev, drop the corpus, apply fault once an ingest run embeds, then wait for the clean state.

    indexed_first: drop that many files first and wait until they are indexed, so the fault finds some files done.
    """
    manifest = root / "grace.yaml"
    # Deployment's manifest with database: in place of store:, so the Dagster instance is on PostgreSQL too.
    manifest.write_text(manifest_text(None, **OPTIONS).replace("state_dir: state\n", f"state_dir: state\n{database}"))
    home = root / "dagster_home"
    server = DevServer(manifest, home, free_port(), root / "dagster-dev.log")
    server.start()
    instance = DagsterInstance.from_config(str(home))
    resources = build_resources(load_manifest(manifest))
    store, index = resources["store"].get(), resources["vector_index"].get()
    model_id = resources["embedder"].get().model_id

    def totals() -> dict:
        return index_stats(store, index, model_id)["total"]

    def drop(files: list[tuple[str, str]]) -> None:
        for name, text in files:
            (root / "inbox" / name).write_text(text)

    files = list(corpus().items())
    try:
        if indexed_first:
            drop(files[:indexed_first])
            wait_for(lambda: totals()["indexed_embeddings"] == indexed_first and not in_flight(instance), 120)
        drop(files[indexed_first:])
        wait_for(lambda: embedding_run(instance), timeout=120, every=0.5)
        server = fault(server, totals)

        def converged() -> bool:
            return totals() == clean_state["stats"] and not in_flight(instance)

        wait_for(converged, timeout=180, every=2)
        assert server.process.poll() is None, "grace dev (daemon, webserver, code server) outlives the fault"
        assert graphql(server.port, RUNS_QUERY)["runsOrError"]["__typename"] == "Runs", "the UI reads its runs again"
    finally:
        store.dispose()
        instance.dispose()
        server.stop()
    deployment = Deployment(root, postgres_url, None, **OPTIONS)  # the same state, read as the clean run was
    assert_same_state(deployment.snapshot(), clean_state)
    [hit] = deployment.search(corpus()["file-077.txt"], k=1)
    assert hit.path == "file-077.txt"
    deployment.store.dispose()


def in_flight(instance: DagsterInstance) -> list[DagsterRun]:
    return instance.get_runs(filters=RunsFilter(statuses=NOT_FINISHED_STATUSES))


def terminate_backends(postgres_url: str) -> int:
    """pg_terminate_backend every other connection to the test database; how many there were."""
    database = make_url(postgres_url).database
    admin = sqlalchemy.create_engine(postgres_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            killed = connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %(db)s AND pid <> pg_backend_pid()",
                {"db": database},
            ).all()
    finally:
        admin.dispose()
    return len(killed)


def test_terminated_postgresql_connections_mid_run_end_as_a_clean_run(
    tmp_path, database_setting, postgres_url, clean_state
):
    def terminate_twice(server: DevServer, _totals) -> DevServer:
        assert terminate_backends(postgres_url) > 0
        time.sleep(2)
        terminate_backends(postgres_url)
        return server

    faulted_deployment_ends_clean(tmp_path, database_setting, postgres_url, clean_state, terminate_twice)


def pg_ctlcluster(action: str) -> subprocess.CompletedProcess:
    [version] = [path.name for path in Path("/etc/postgresql").iterdir()]
    command = [PG_CTLCLUSTER, "--skip-systemctl-redirect", version, "main", action]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.solo  # every other PostgreSQL test would see the restart too
def test_a_postgresql_restart_mid_run_ends_as_a_clean_run(tmp_path, database_setting, postgres_url, clean_state):
    if PG_CTLCLUSTER is None or make_url(postgres_url).host != "127.0.0.1":
        pytest.skip(
            "PostgreSQL is not this machine's pg_ctlcluster server (the pgserver fallback?): not ours to restart"
        )

    def restart(server: DevServer, _totals) -> DevServer:
        try:
            restarted = pg_ctlcluster("restart")
            assert restarted.returncode == 0, restarted.stderr
        finally:
            if not postgres_answers(postgres_url):
                pg_ctlcluster("start")
        return server

    faulted_deployment_ends_clean(tmp_path, database_setting, postgres_url, clean_state, restart)


def test_a_daemon_killed_mid_burst_and_started_again_ends_as_a_clean_run(
    tmp_path, database_setting, postgres_url, clean_state
):
    def kill_and_restart(server: DevServer, totals) -> DevServer:
        os.killpg(server.process.pid, signal.SIGKILL)  # the daemon, webserver, code server and run workers at once
        server.stop()  # reaps the group leader
        assert FIRST_BURST <= totals()["indexed_embeddings"] < FILES, "the kill must find the second burst unfinished"
        again = DevServer(server.manifest, server.home, free_port(), server.log_path.with_suffix(".again.log"))
        again.start()
        return again

    faulted_deployment_ends_clean(
        tmp_path, database_setting, postgres_url, clean_state, kill_and_restart, indexed_first=FIRST_BURST
    )

"""kill -9 during each step, then the product's own recovery: the same rows, vectors, index and stats
as a clean run, on SQLite and on PostgreSQL.

tests/helpers/crash_run.py is one daemon lifetime: a persistent Dagster instance, sensor cursors kept in it,
run keys checked against its runs, dead runs failed by the run_health sensor once their heartbeat is stale,
and periodic reconciles. Each test kills it once, starts it again, and checks the instance's runs as well
as the data: the runs it received under a run key are those of a clean run, no more.
"""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import RUN_KEY_TAG

from grace.core.names import INGEST_JOB, PARTITION_TAG, REASON_TAG
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment, assert_same_state

RUNNER = Path(__file__).resolve().parents[1] / "helpers" / "crash_run.py"
PARAGRAPH = "Sentence {i} of note {n} talks about topic {t} in some detail, with words like alpha{t} and beta{i}. "
RUN_FAILPOINTS = ["documents.after_one", "chunks.after_one", "embeddings.after_group"]
INDEX_FAILPOINTS = ["index.before_swap", "index.after_swap"]
KILLED = -9
REAL_NOTES = 4


def corpus(notes: int) -> dict[str, str]:
    return {f"note{n:02d}.txt": "".join(PARAGRAPH.format(i=i, n=n, t=n % 5) for i in range(25)) for n in range(notes)}


def run(root: Path, store_url: str, kind: str, failpoint: str | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "GRACE_FAILPOINT": failpoint or ""}
    return subprocess.run(
        [sys.executable, str(RUNNER), str(root), store_url, kind], env=environment, capture_output=True, text=True
    )


def prepared(root: Path, notes: int = 12) -> Path:
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    for name, text in corpus(notes).items():
        (inbox / name).write_text(text)
    return root


def snapshot(root: Path, store_url: str, kind: str) -> dict:
    embedder = EmbedderResource(batch_size=2) if kind == "real" else HashingEmbedderResource()
    return Deployment(root, store_url, embedder, shards=2, max_bytes="1MB").snapshot()


def instance_runs(root: Path) -> list[DagsterRun]:
    instance = DagsterInstance.from_config(str(root / "dagster_home"))
    try:
        return list(instance.get_runs())
    finally:
        instance.dispose()


def failure_messages(root: Path) -> list[str]:
    """The messages of every RUN_FAILURE event in the instance: who ended which run, and why."""
    instance = DagsterInstance.from_config(str(root / "dagster_home"))
    try:
        return [
            entry.message
            for run in instance.get_runs()
            for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
        ]
    finally:
        instance.dispose()


def keyed_launches(runs: list[DagsterRun]) -> Counter:
    """(job, shard) -> how many runs the instance received under a run key: one per batch of recorded changes.

    A restarted sensor that asked for work already launched under another key, or a run key launched twice,
    makes a count higher than a clean run's.
    """
    return Counter((run.job_name, run.tags.get(PARTITION_TAG)) for run in runs if RUN_KEY_TAG in run.tags)


def crash_then_recover(root: Path, store_url: str, kind: str, failpoint: str) -> None:
    crashed = run(root, store_url, kind, failpoint)
    assert crashed.returncode == KILLED, f"the failpoint must kill the process:\n{crashed.stderr[-3000:]}"
    recovered = run(root, store_url, kind)
    assert recovered.returncode == 0, recovered.stderr[-3000:]


@pytest.fixture(scope="module")
def clean_fake(tmp_path_factory):
    """The state every recovery must reach; one clean run on SQLite serves both backends."""
    root = prepared(tmp_path_factory.mktemp("clean"))
    store_url = f"sqlite:///{root / 'clean.db'}"
    finished = run(root, store_url, "fake")
    assert finished.returncode == 0, finished.stderr[-3000:]
    state = snapshot(root, store_url, "fake")
    assert state["stats"]["index_coverage"] == 1.0 and state["stats"]["tombstoned"] == 0
    assert len({path for path, _ordinal, _text in state["chunks"]}) == 12
    launches = keyed_launches(instance_runs(root))
    assert launches and max(launches.values()) == 1, launches
    return state, launches


@pytest.mark.parametrize("failpoint", RUN_FAILPOINTS + INDEX_FAILPOINTS + ["daemon.before_cursor_commit"])
def test_kill_then_recover_converges_to_the_clean_state(tmp_path, store_url, clean_fake, failpoint):
    clean_state, clean_launches = clean_fake
    root = prepared(tmp_path)
    crash_then_recover(root, store_url, "fake", failpoint)
    assert_same_state(snapshot(root, store_url, "fake"), clean_state)
    runs = instance_runs(root)
    assert keyed_launches(runs) == clean_launches, "work already launched was launched again"
    assert not [run for run in runs if not run.is_finished], "no run is left looking alive"
    if failpoint in RUN_FAILPOINTS + INDEX_FAILPOINTS:
        [killed] = [run for run in runs if run.status == DagsterRunStatus.FAILURE]
        [message] = failure_messages(root)
        assert "run_health: its run worker stopped beating" in message, f"{killed.run_id}: {message}"
    if failpoint in RUN_FAILPOINTS:
        resumed = [run for run in runs if run.job_name == INGEST_JOB and REASON_TAG in run.tags]
        assert resumed, "the killed shard's work was re-requested by the reconcile"


@pytest.fixture(scope="module")
def clean_real(tmp_path_factory):
    root = prepared(tmp_path_factory.mktemp("clean_real"), notes=REAL_NOTES)
    store_url = f"sqlite:///{root / 'clean.db'}"
    finished = run(root, store_url, "real")
    assert finished.returncode == 0, finished.stderr[-3000:]
    return snapshot(root, store_url, "real")


def test_kill_during_embedding_on_the_real_model(tmp_path, store_url, clean_real):
    root = prepared(tmp_path, notes=REAL_NOTES)
    crash_then_recover(root, store_url, "real", "embeddings.after_group")
    assert_same_state(snapshot(root, store_url, "real"), clean_real)

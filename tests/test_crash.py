"""kill -9 of a run during each step, then a rerun: the same rows, vectors, index and stats as a clean run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grace.resources.embedder import EmbedderResource
from tests.fakes import HashingEmbedderResource
from tests.harness import Deployment, assert_same_state

RUNNER = Path(__file__).with_name("crash_run.py")
PARAGRAPH = "Sentence {i} of note {n} talks about topic {t} in some detail, with words like alpha{t} and beta{i}. "


def corpus() -> dict[str, str]:
    return {f"note{n:02d}.txt": "".join(PARAGRAPH.format(i=i, n=n, t=n % 5) for i in range(25)) for n in range(12)}


def run(root: Path, kind: str, failpoint: str | None = None) -> int:
    environment = {**os.environ, "GRACE_FAILPOINT": failpoint or ""}
    return subprocess.run(
        [sys.executable, str(RUNNER), str(root), kind], env=environment, capture_output=True
    ).returncode


def prepared(root: Path) -> Path:
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    for name, text in corpus().items():
        (inbox / name).write_text(text)
    return root


def snapshot(root: Path, kind: str) -> dict:
    embedder = EmbedderResource(batch_size=2) if kind == "real" else HashingEmbedderResource()
    return Deployment(root, None, embedder, shards=2, max_bytes="1MB").snapshot()


@pytest.fixture(scope="module")
def clean_fake(tmp_path_factory):
    root = prepared(tmp_path_factory.mktemp("clean"))
    assert run(root, "fake") == 0
    return snapshot(root, "fake")


@pytest.mark.parametrize(
    "failpoint",
    ["documents.after_one", "chunks.after_one", "embeddings.after_group", "index.before_swap", "index.after_swap"],
)
def test_kill_then_rerun_converges(tmp_path, clean_fake, failpoint):
    root = prepared(tmp_path)
    assert run(root, "fake", failpoint) == -9, "the failpoint must kill the run"
    assert run(root, "fake") == 0
    after = snapshot(root, "fake")
    assert_same_state(after, clean_fake)
    assert after["stats"]["index_coverage"] == 1.0 and after["stats"]["tombstoned"] == 0


def test_kill_during_embedding_on_the_real_model(tmp_path_factory):
    clean = prepared(tmp_path_factory.mktemp("clean_real"))
    assert run(clean, "real") == 0
    crashed = prepared(tmp_path_factory.mktemp("crashed_real"))
    assert run(crashed, "real", "embeddings.after_group") == -9
    assert run(crashed, "real") == 0
    assert_same_state(snapshot(crashed, "real"), snapshot(clean, "real"))

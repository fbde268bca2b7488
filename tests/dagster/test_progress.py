"""Progress of long runs: files and chunks done, chunks/s and an ETA, at most and at least every interval,
on a fake clock; then a real ingest run on the real model, whose log carries those lines for every step."""

from __future__ import annotations

import re
import threading
import time

import pytest

import grace.resources.runs.progress as progress_module
from grace.resources.runs.progress import Progress
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.harness import Deployment


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_long_step_logs_counts_pace_and_eta_every_interval_and_no_more_often():
    clock, lines, logged_at = FakeClock(), [], []

    def log(line: str) -> None:
        lines.append(line)
        logged_at.append(clock.now)

    progress = Progress(log, "shard 0 chunks", total_files=100, clock=clock, interval=10)
    for _file in range(100):
        clock.now += 1.5  # one file every 1.5 s, 4 chunks each
        progress.advance(files=1, chunks=4)
    progress.finish()
    # 150 s of work: a line once 10 s have passed since the last, so every 7th file (10.5 s), 14 lines.
    gaps = [later - earlier for earlier, later in zip([1000.0, *logged_at[:-2]], logged_at[:-1])]
    assert len(lines) == 14 + 1 and all(10 <= gap < 11.5 for gap in gaps), gaps
    assert lines[0] == "shard 0 chunks: files 7/100, chunks 28, 2.7 chunks/s, ETA 2m20s"
    assert lines[-2] == "shard 0 chunks: files 98/100, chunks 392, 2.7 chunks/s, ETA 3s"
    assert lines[-1] == "shard 0 chunks: done, files 100/100, chunks 400 in 2m30s"


def test_eta_comes_from_the_chunks_total_then_the_files_then_the_expected_duration():
    clock, lines = FakeClock(), []
    embeddings = Progress(lines.append, "embeddings", total_chunks=1000, clock=clock, interval=10)
    clock.now += 10
    embeddings.advance(chunks=250)
    assert lines.pop() == "embeddings: chunks 250/1,000, 25.0 chunks/s, ETA 30s"
    documents = Progress(lines.append, "documents", total_files=40, clock=clock, interval=10)
    clock.now += 10
    documents.advance(files=10)
    assert lines.pop() == "documents: files 10/40, 1.0 files/s, ETA 30s"
    build = Progress(lines.append, "index build", clock=clock, interval=10, expected_seconds=25)
    clock.now += 10
    build.log_line()
    clock.now += 20
    build.log_line()
    assert lines == ["index build: 10s elapsed, ETA 15s", "index build: 30s elapsed, ETA overdue by 5s"]
    unknown = Progress(lines.append, "embeddings", clock=clock, interval=10)
    clock.now += 10
    unknown.advance(chunks=5)
    assert lines[-1] == "embeddings: chunks 5, 0.5 chunks/s, ETA unknown"


def test_a_short_step_logs_nothing():
    clock, lines = FakeClock(), []
    progress = Progress(lines.append, "documents", total_files=3, clock=clock, interval=10)
    for _file in range(3):
        clock.now += 1
        progress.advance(files=1)
    progress.finish()
    assert lines == []


def test_run_logs_from_the_calling_thread_while_the_work_runs_and_raises_its_error():
    lines, threads = [], []

    def log(line: str) -> None:
        lines.append(line)
        threads.append(threading.current_thread())

    progress = Progress(log, "index build", interval=0.05, expected_seconds=0.3)
    assert progress.run(lambda: time.sleep(0.3) or "built") == "built"
    assert len(lines) >= 3 and all(line.startswith("index build: ") and "ETA" in line for line in lines)
    assert set(threads) == {threading.current_thread()}, "Dagster's log handler is not thread-safe"

    def broken():
        time.sleep(0.1)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        Progress(log, "index build", interval=0.02).run(broken)


PROGRESS_LINE = re.compile(r"^shard \d (documents|chunks|embeddings|index build): .*, ETA \S+")


def test_a_real_ingest_and_rebuild_log_progress_in_their_runs(tmp_path, onnx_model_cache, monkeypatch):
    """The real model (onnx-int8), real Dagster runs: with the interval at 0 every step reports, in its run's log."""
    monkeypatch.setattr(progress_module, "PROGRESS_SECONDS", 0.0)
    embedder = EmbedderResource(backend="onnx-int8", cache_root=str(onnx_model_cache))
    deployment = Deployment(tmp_path, None, embedder, shards=1, max_bytes="1MB")
    for number in range(6):
        tides = " ".join(f"Tide {number}.{line} follows the moon across bay {line * 7 + number}." for line in range(60))
        deployment.drop(f"note{number}.txt", tides)
    assert [request.partition_key for request in deployment.tick()] == ["0"]
    result = deployment.run_job("ingest", 0)  # the ingest job as a run worker runs it, its index build inline
    assert result.success
    messages = [entry.user_message for entry in deployment.instance.all_logs(result.run_id)]
    lines = [message for message in messages if PROGRESS_LINE.match(message)]
    steps = {PROGRESS_LINE.match(line).group(1) for line in lines}
    assert steps == {"documents", "chunks", "embeddings", "index build"}, messages
    text = "\n".join(lines)
    assert re.search(r"shard 0 documents: files 6/6, [\d.,]+ files/s, ETA 0s", text), text
    assert re.search(r"shard 0 chunks: files 6/6, chunks \d+, [\d.,]+ chunks/s, ETA 0s", text), text
    [total] = {int(n) for n in re.findall(r"embeddings: chunks \d+/(\d+)", text)}
    assert total == deployment.stats()["total"]["chunks"] > 6, "every chunk's text is new: the total counts them all"
    assert re.search(rf"embeddings: chunks {total}/{total}, [\d.,]+ chunks/s, ETA 0s", text), text
    assert any(message.startswith("shard 0 embeddings: done, chunks") for message in messages)
    assert deployment.stats()["total"]["index_coverage"] == 1.0

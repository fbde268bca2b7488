"""Ingest across 4 shards under `grace dev`, with routing.shard_runs 1 and then 2: does a second worker help?

    .venv/bin/python bench/parallel.py [--files 800] [--words 300] [--workers 1 2] [--rounds 3] [--json]

For each worker count, a fresh temporary folder, grace.yaml (4 shards, SQLite, the real onnx-int8
model, routing.shard_runs = workers) and `grace dev`; once it is up, every file is dropped at once
and the clock runs until every file is searchable and every shard's index covers every embedding.
embedding.threads is left unset, so each run's model gets the cores divided by shard_runs.
The worker counts alternate for --rounds rounds, so a busy spell on a shared machine hits both.
Prints seconds and chunks/s per worker count and, with --json, one object last: files, chunks,
by_workers {workers: {seconds, chunks_per_s}} (medians over the rounds), and speedup (median
seconds with the fewest workers / median seconds with the most).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter  # noqa: E402

from bench.corpus import documents  # noqa: E402
from grace.api import stats  # noqa: E402
from tests.helpers.devserver import DevServer, free_port  # noqa: E402

IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
MANIFEST = """state_dir: state
sources:
  - {{name: documents, path: inbox}}
index: {{shards: 4}}
routing: {{shard_runs: {workers}}}
"""


def ingest_seconds(files: dict[str, str], workers: int, timeout: float) -> tuple[float, int]:
    """(seconds from the drop to every file searchable and indexed, chunks) under a fresh `grace dev`."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        manifest = root / "grace.yaml"
        manifest.write_text(MANIFEST.format(workers=workers))
        inbox = root / "inbox"
        with DevServer(manifest, root / "dagster_home", free_port(), root / "dagster-dev.log"):
            stats(manifest)  # the store exists and is migrated before the clock starts
            time.sleep(8)  # the folder sensor's first tick starts the watcher
            started = time.monotonic()
            for name, text in files.items():
                (inbox / name).write_text(text)
            with DagsterInstance.from_config(str(root / "dagster_home")) as instance:
                while time.monotonic() - started < timeout:
                    total = stats(manifest)["total"]
                    done = total["documents_active"] == len(files) and total["index_coverage"] == 1.0
                    # Active documents may still wait for their chunks: done only once no run is left.
                    if done and not instance.get_runs_count(RunsFilter(statuses=IN_FLIGHT)):
                        return time.monotonic() - started, total["total_embeddings"]
                    time.sleep(0.25)
    raise TimeoutError(f"{len(files)} files not ingested with {workers} worker(s) in {timeout:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=800)
    parser.add_argument("--words", type=int, default=300, help="words per file")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="routing.shard_runs values")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the worker counts this many times")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last")
    args = parser.parse_args()
    files = {f"d{number:05d}.txt": text for number, text in enumerate(documents(args.files, args.words).values())}
    timings: dict[int, list[float]] = {workers: [] for workers in args.workers}
    counted = set()
    for _round in range(args.rounds):
        for workers in args.workers:
            seconds, chunks = ingest_seconds(files, workers, args.timeout)
            counted.add(chunks)
            timings[workers].append(seconds)
            print(f"shard_runs {workers}: {len(files)} files, {chunks} chunks in {seconds:.2f} s", flush=True)
    if len(counted) > 1:
        sys.exit(f"the runs embedded different numbers of chunks ({sorted(counted)}): the figures are not comparable")
    by_workers = {}
    for workers, seconds in timings.items():
        median = statistics.median(seconds)
        by_workers[str(workers)] = {"seconds": round(median, 2), "chunks_per_s": round(chunks / median, 1)}
    fewest, most = str(min(args.workers)), str(max(args.workers))
    speedup = by_workers[fewest]["seconds"] / by_workers[most]["seconds"]
    print(f"speedup {most} over {fewest} worker(s): {speedup:.2f}x")
    if args.json:
        figures = {"files": len(files), "chunks": chunks, "by_workers": by_workers, "speedup": round(speedup, 2)}
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

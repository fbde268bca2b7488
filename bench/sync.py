"""Incremental sync costs: unchanged re-saves, one edit among many, and ticks over a big folder.

    .venv/bin/python bench/sync.py [--files 10000] [--big 100000]

Part 1 (real model, SQLite): ingest --files one-paragraph files, then re-save all of them
with unchanged content, then edit one; print the chunks each step re-embedded and the
wall time of its tick and runs. Part 2 (sensor only): put --big files in the watched
folder, then time a full reconcile scan with nothing changed, and an event-driven tick
after 10 edits. Watchdog events are on, as in the shipped grace.yaml.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import documents  # noqa: E402
from grace.resources.text.chunking import Chunker  # noqa: E402
from grace.resources.wiring.dagster_resources import EmbedderResource  # noqa: E402
from grace.sensors.watcher import stop_watchers  # noqa: E402
from tests.helpers.fakes import HashingEmbedderResource  # noqa: E402
from tests.helpers.harness import Deployment  # noqa: E402

SETTLE_SECONDS = 1.5  # watchdog buffers inotify events ~0.5 s to pair moves


def timed_sync(deployment: Deployment) -> tuple[int, int, float]:
    """(runs, chunks embedded, seconds) for one tick and the ingest runs it asks for."""
    started = time.perf_counter()
    requests = deployment.tick()
    embedded = 0
    for request in requests:
        result = deployment.ingest(int(request.partition_key))
        for event in result.get_asset_materialization_events():
            if event.asset_key.to_user_string() == "embeddings":
                embedded += event.materialization.metadata["embedded"].value
    return len(requests), embedded, time.perf_counter() - started


def part_one(files: int) -> None:
    corpus = documents(files, 40, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        deployment = Deployment(Path(folder), None, EmbedderResource(), shards=4, max_bytes="20MB", events=True)
        for name, text in corpus.items():
            deployment.drop(name, text)
        runs, embedded, seconds = timed_sync(deployment)
        print(f"initial ingest of {files} files: {runs} runs, {embedded} chunks embedded, {seconds:.1f} s")
        for name, text in corpus.items():
            deployment.drop(name, text)
        time.sleep(SETTLE_SECONDS)
        runs, embedded, seconds = timed_sync(deployment)
        print(f"{files} files re-saved unchanged: {runs} runs, {embedded} chunks re-embedded, tick {seconds:.2f} s")
        victim = next(iter(corpus))
        edited = corpus[victim] + " One more sentence about an edit."
        deployment.drop(victim, edited)
        time.sleep(SETTLE_SECONDS)
        runs, embedded, seconds = timed_sync(deployment)
        chunker = Chunker(deployment.embedder.tokenizer_file)
        changed = {c.chunk_hash for c in chunker.split(edited)} - {c.chunk_hash for c in chunker.split(corpus[victim])}
        print(
            f"1 file edited among {files}: {runs} run, {embedded} chunk(s) re-embedded "
            f"(the file's changed chunks: {len(changed)}), tick + run {seconds:.2f} s"
        )
        stop_watchers()


def part_two(big: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        deployment = Deployment(Path(folder), None, HashingEmbedderResource(), shards=4, max_bytes="20MB", events=True)
        for number in range(big):
            deployment.drop(f"d{number // 1000:03d}/f{number:06d}.txt", f"file {number}")
        ticks = []
        while not ticks or json.loads(deployment.cursors["watch_docs"])["scan_unfinished"]:
            started = time.perf_counter()
            deployment.tick()
            ticks.append(time.perf_counter() - started)
        print(
            f"{big} files, first scan (size and mtime, record rows): {sum(ticks):.1f} s over {len(ticks)} ticks, "
            f"longest {max(ticks):.2f} s"
        )
        deployment.tick()  # forgets the change events the first tick requested
        full = []
        for _ in range(3):
            # pretend the last reconcile is long past, so this tick scans the whole folder
            deployment.cursors["watch_docs"] = json.dumps(
                {**json.loads(deployment.cursors["watch_docs"]), "reconciled_at": 0}
            )
            started = time.perf_counter()
            deployment.tick()
            full.append(time.perf_counter() - started)
        print(f"full reconcile scan, nothing changed: median {statistics.median(full):.2f} s (goal <= 10 s)")
        event_ticks = []
        for round_number in range(3):
            for number in range(10):
                deployment.drop(f"d{number:03d}/f{number * 1000:06d}.txt", f"edited {round_number} {number}")
            time.sleep(SETTLE_SECONDS)
            started = time.perf_counter()
            requests = deployment.tick()
            event_ticks.append(time.perf_counter() - started)
            assert requests, "the tick must see the edits"
        print(f"event-driven tick after 10 edits: median {statistics.median(event_ticks):.3f} s (goal <= 1 s)")
        started = time.perf_counter()
        deployment.tick()
        print(f"event-driven tick, nothing changed: {time.perf_counter() - started:.3f} s")
        stop_watchers()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--part", choices=["1", "2", "all"], default="all")
    args = parser.parse_args()
    if args.part in ("1", "all"):
        part_one(args.files)
    if args.part in ("2", "all"):
        part_two(args.big)


if __name__ == "__main__":
    main()

"""Grace's own costs at scale, the model taken out: ticks, ingest, search, stats and memory.

    .venv/bin/python bench/scale.py --files 10000 100000 [--json]

A 384-dimension hashing embedder (tests/helpers/fakes.py) stands in for the model, so these figures are
what Grace adds around it (files, SQLite, Dagster, Annoy), at 4 shards and the default 50 trees:
- first_scan_s, max_tick_s: every folder-sensor tick until each file is recorded;
- ingest_docs_per_s, ingest_peak_rss_mb: the ingest of every shard, in a fresh process (as a run
  worker would be), and that process's peak RSS;
- ingest_docs_per_s_dense_only: the same files ingested into a second store beside it, with the
  lexical index's postings not written (the baseline), and lexical_cost_ratio, ingest_docs_per_s
  divided by it (goal >= 0.9);
- search_p50_ms, search_p95_ms: 200 hybrid queries (dense and lexical, fused) with every vector
  indexed; search_dense_p50_ms and search_lexical_p50_ms: each side alone, the dense side with
  query encoding excluded; search_pending_p50_ms, search_pending_p95_ms: hybrid with 1% more files
  ingested, not indexed;
- freshness_tick_s, stats_s: one index_freshness evaluation and index_stats, median of 5, with
  those 1% pending;
- rebuild_s (median per shard) and check_s (index_matches_store over every shard).
With several --files sizes, the last line holds the largest size's keys, every size under
by_files, and search_p50_growth (largest / smallest search_p50_ms).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dagster import build_sensor_context
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.freshness import percentile  # noqa: E402
from bench.memory import peak_rss_mb  # noqa: E402
from grace.resources.db.schema import documents  # noqa: E402
from grace.resources.index.search import Searcher, index_stats  # noqa: E402
from grace.resources.store.lexical import LexicalIndex  # noqa: E402
from tests.helpers.fakes import HashingEmbedder, HashingEmbedderResource  # noqa: E402
from tests.helpers.harness import Deployment  # noqa: E402

SHARDS = 4
QUERIES = 200


def open_deployment(folder: Path) -> Deployment:
    HashingEmbedder.batch_size = 32  # the real model's batch, so the embeddings step commits pages of 256
    return Deployment(folder, None, HashingEmbedderResource(dimension=384), shards=SHARDS, max_bytes="1MB", trees=50)


def seconds(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def note(number: int) -> str:
    return f"note {number} about word{number % 997} word{number % 991} word{number % 983} and topic{number % 89}"


def recorded(deployment: Deployment) -> int:
    with deployment.store.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(documents)).scalar_one()


def scan_until_recorded(deployment: Deployment, expected: int) -> tuple[list[float], list]:
    """Tick the folder sensor until the store records expected documents: (tick seconds, run requests)."""
    ticks, requests = [], []
    while recorded(deployment) < expected:
        if len(ticks) >= 200:
            raise RuntimeError(f"{recorded(deployment)} of {expected} files recorded after 200 ticks")
        ticks.append(seconds(lambda: requests.extend(deployment.tick())))
    return ticks, requests


def ingest_in_fresh_process(folder: Path, lexical: bool = True) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of ingesting every shard in a new Python process; lexical=False writes
    no postings (the dense-only baseline)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=_ingest_worker, args=(str(folder), results, lexical))
    worker.start()
    elapsed, peak_mb = results.get()
    worker.join()
    if worker.exitcode != 0:
        raise RuntimeError(f"the ingest process exited with {worker.exitcode}")
    return elapsed, peak_mb


def _ingest_worker(folder: str, results, lexical: bool) -> None:
    logging.disable(logging.INFO)
    if not lexical:  # the baseline: the chunks step as it was before the lexical index
        LexicalIndex.postings = lambda self, texts: []
    deployment = open_deployment(Path(folder))
    started = time.perf_counter()
    for shard in range(SHARDS):
        if not deployment.ingest(shard).success:
            raise RuntimeError(f"ingest of shard {shard} failed")
    elapsed = time.perf_counter() - started
    results.put((elapsed, peak_rss_mb()))


def search_latencies_ms(deployment: Deployment, queries: list[str], mode: str) -> tuple[float, float]:
    """(p50, p95) of the queries in mode; dense takes encoded vectors, so encoding is left out."""
    searcher = Searcher(deployment.store, deployment.index, deployment.embedder, mode)
    if mode == "dense":
        vectors = deployment.embedder.encode(queries)
        searcher.search_vector(vectors[0], 10)  # opens each shard's index once, as a warm server has
        latencies = [seconds(lambda v=v: searcher.search_vector(v, 10)) * 1000 for v in vectors]
    else:
        searcher.search(queries[0], 10)
        latencies = [seconds(lambda q=q: searcher.search(q, 10)) * 1000 for q in queries]
    return statistics.median(latencies), percentile(latencies, 0.95)


def dense_only_ingest(files: int, folder: Path) -> float:
    """Docs/s of the same files ingested into a store of their own with no postings written."""
    deployment = open_deployment(folder)
    for n in range(files):
        deployment.drop(f"d{n // 1000:03d}/n{n:06d}.txt", note(n))
    scan_until_recorded(deployment, files)
    deployment.store.dispose()
    ingest_s, _peak_mb = ingest_in_fresh_process(folder, lexical=False)
    return files / ingest_s


def median_seconds(action, repeats: int = 5) -> float:
    return statistics.median(seconds(action) for _ in range(repeats))


def measure(files: int, folder: Path, log) -> dict:
    deployment = open_deployment(folder)
    for n in range(files):
        deployment.drop(f"d{n // 1000:03d}/n{n:06d}.txt", note(n))
    ticks, _requests = scan_until_recorded(deployment, files)
    log(f"{files} files: first scan {sum(ticks):.1f} s over {len(ticks)} ticks, longest {max(ticks):.2f} s")
    ingest_s, peak_mb = ingest_in_fresh_process(folder)
    log(f"ingest {ingest_s:.1f} s ({files / ingest_s:.0f} docs/s), peak RSS {peak_mb:.0f} MB")
    with tempfile.TemporaryDirectory() as baseline:
        dense_only = dense_only_ingest(files, Path(baseline))
    log(f"dense-only ingest beside it: {dense_only:.0f} docs/s, lexical cost ratio {files / ingest_s / dense_only:.3f}")
    rebuilds = [seconds(lambda s=s: deployment.rebuild(s)) for s in range(SHARDS)]
    check_s = seconds(deployment.check)
    queries = [f"word{n} word{n * 7 % 997} topic{n % 89}" for n in range(QUERIES)]
    indexed_p50, indexed_p95 = search_latencies_ms(deployment, queries, "hybrid")
    dense_p50, _dense_p95 = search_latencies_ms(deployment, queries, "dense")
    lexical_p50, _lexical_p95 = search_latencies_ms(deployment, queries, "lexical")
    log(
        f"search, all indexed: hybrid p50 {indexed_p50:.1f} ms, p95 {indexed_p95:.1f} ms; "
        f"dense p50 {dense_p50:.1f} ms, lexical p50 {lexical_p50:.1f} ms"
    )
    extra = files // 100
    for n in range(files, files + extra):
        deployment.drop(f"new/n{n:06d}.txt", "fresh " + note(n))
    _ticks, requests = scan_until_recorded(deployment, files + extra)
    for shard in sorted({int(request.partition_key) for request in requests}):
        assert deployment.ingest(shard).success
    pending_p50, pending_p95 = search_latencies_ms(deployment, queries, "hybrid")
    log(f"search, {extra} files pending: p50 {pending_p50:.1f} ms, p95 {pending_p95:.1f} ms")
    freshness = deployment.defs.resolve_sensor_def("index_freshness")
    context = build_sensor_context(instance=deployment.instance, resources=deployment.resources)
    freshness_s = median_seconds(lambda: freshness(context))
    stats_s = median_seconds(lambda: index_stats(deployment.store, deployment.index, deployment.embedder.model_id))
    log(f"index_freshness tick {freshness_s:.3f} s, stats {stats_s:.3f} s")
    deployment.store.dispose()
    return {
        "files": files,
        "first_scan_s": round(sum(ticks), 2),
        "scan_ticks": len(ticks),
        "max_tick_s": round(max(ticks), 2),
        "ingest_docs_per_s": round(files / ingest_s, 1),
        "ingest_docs_per_s_dense_only": round(dense_only, 1),
        "lexical_cost_ratio": round(files / ingest_s / dense_only, 3),
        "ingest_peak_rss_mb": round(peak_mb, 1),
        "rebuild_s": round(statistics.median(rebuilds), 2),
        "check_s": round(check_s, 2),
        "search_p50_ms": round(indexed_p50, 2),
        "search_p95_ms": round(indexed_p95, 2),
        "search_dense_p50_ms": round(dense_p50, 2),
        "search_lexical_p50_ms": round(lexical_p50, 2),
        "search_pending_p50_ms": round(pending_p50, 2),
        "search_pending_p95_ms": round(pending_p95, 2),
        "pending_files": extra,
        "freshness_tick_s": round(freshness_s, 4),
        "stats_s": round(stats_s, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", default=[100_000], help="corpus sizes, one run each")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # Dagster's per-step debug lines, not figures
    if any(files < 100 for files in args.files):
        parser.error("--files: each size must be at least 100 (1% of it is the pending share)")
    runs = []
    for files in sorted(args.files):
        with tempfile.TemporaryDirectory() as folder:
            runs.append(measure(files, Path(folder), lambda line: print(line, flush=True)))
    result = {**runs[-1], "by_files": {str(run["files"]): run for run in runs}}
    if len(runs) > 1:
        result["search_p50_growth"] = round(runs[-1]["search_p50_ms"] / runs[0]["search_p50_ms"], 2)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

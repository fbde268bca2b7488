"""One shard's query: exact search over its unit vectors against Annoy, by shard size, same vectors, same run.

    .venv/bin/python bench/shard_search.py [--sizes 1000,5000,20000,50000] [--queries 200] [--json]

Vectors are clustered near-duplicates (the skew real folders have: copies, templates, versions),
384 dimensions like the shipped model; queries are perturbed members. For each size, the shard is
built by ShardedIndex twice, once with exact search allowed and once with Annoy alone (trees 50,
search_k 25,000, the shipped settings), and each query is timed through LoadedIndex.nearest, k 10.
Prints per size exact_ms_p50, annoy_ms_p50 and annoy_recall_at_10 (against the exact top 10), and
with --json one object on the last line. EXACT_SEARCH_MAX_ITEMS in grace/core/manifest.py
is the largest size where exact search costs about what Annoy does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grace.core.index_config import EXACT_SEARCH_MAX_ITEMS  # noqa: E402
from grace.resources.index.vector_index import ShardedIndex  # noqa: E402

DIMENSION, K, TREES, SEARCH_K = 384, 10, 50, 25_000


def clustered(count: int, rng: np.random.Generator) -> np.ndarray:
    centers = rng.standard_normal((max(count // 50, 1), DIMENSION))
    vectors = centers[rng.integers(0, len(centers), count)] + 0.3 * rng.standard_normal((count, DIMENSION))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def timed(loaded, queries: np.ndarray) -> tuple[list[float], list[set[int]]]:
    times, found = [], []
    for query in queries:
        started = time.perf_counter()
        ids, _scores = loaded.nearest(query, K, SEARCH_K)
        times.append((time.perf_counter() - started) * 1000)
        found.append(set(ids.tolist()))
    return times, found


def measure(size: int, queries: int, root: Path) -> dict:
    rng = np.random.default_rng(size)
    vectors = clustered(size, rng)
    picks = vectors[rng.integers(0, size, queries)] + 0.2 * rng.standard_normal((queries, DIMENSION))
    ids = np.arange(1, size + 1, dtype=np.int64)
    results = {}
    for mode, exact_max_items in (("exact", size), ("annoy", 0)):
        index = ShardedIndex(root / mode / str(size), 1, TREES, SEARCH_K, exact_max_items=exact_max_items)
        index.build(0, ids, vectors, "bench")
        loaded = index.load(0)
        assert loaded.exact == (mode == "exact")
        results[mode] = timed(loaded, picks.astype(np.float32))
    recall = statistics.mean(len(a & e) / K for a, e in zip(results["annoy"][1], results["exact"][1], strict=True))
    return {
        "size": size,
        "exact_ms_p50": round(statistics.median(results["exact"][0]), 3),
        "annoy_ms_p50": round(statistics.median(results["annoy"][0]), 3),
        "annoy_recall_at_10": round(recall, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000,50000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if not sizes or min(sizes) < K or args.queries < 1:
        parser.error(f"--sizes must each be at least {K} and --queries at least 1")
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(size, args.queries, Path(folder)) for size in sizes]
    for row in rows:
        print(
            f"{row['size']:>7} vectors: exact {row['exact_ms_p50']:.2f} ms, Annoy {row['annoy_ms_p50']:.2f} ms "
            f"(recall@10 {row['annoy_recall_at_10']:.3f}), p50 of {args.queries} queries"
        )
    if args.json:
        print(json.dumps({"exact_search_max_items": EXACT_SEARCH_MAX_ITEMS, "sizes": rows}))


if __name__ == "__main__":
    main()

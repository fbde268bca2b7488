"""The plumbing at scale: Grace's own costs with many documents, the model taken out.

    .venv/bin/python bench/scale.py [--files 100000]

A 384-dimension hashing embedder (tests/fakes.py) stands in for the model, so these
figures are what Grace adds around it (files, SQLite, Dagster, Annoy), at 4 shards:
ingest and rebuild time, the index_freshness sensor's tick, search latency (p50/p95
over 50 queries) with every vector indexed and with 1% of them pending, `grace stats`,
and the index_matches_store check.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dagster import build_sensor_context

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.freshness import percentile  # noqa: E402
from tests.fakes import HashingEmbedderResource  # noqa: E402
from tests.harness import Deployment  # noqa: E402


def seconds(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def search_latencies(deployment: Deployment, queries: int = 50) -> str:
    latencies = [seconds(lambda n=n: deployment.search(f"word{n} word{n * 7 % 997}", k=10)) for n in range(queries)]
    return f"p50 {statistics.median(latencies) * 1000:.1f} ms, p95 {percentile(latencies, 0.95) * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        deployment = Deployment(Path(folder), None, HashingEmbedderResource(dimension=384), shards=4, max_bytes="1MB")
        for n in range(args.files):
            deployment.drop(
                f"d{n // 1000:03d}/n{n:06d}.txt", f"note {n} about word{n % 997} word{n % 991} word{n % 983}"
            )
        print(f"{args.files} files, tick (discover, hash, record): {seconds(deployment.tick):.1f} s")
        ingest = [seconds(lambda s=s: deployment.ingest(s)) for s in range(4)]
        print(
            f"ingest (read, chunk, embed, commit), 4 shards: {sum(ingest):.1f} s, {args.files / sum(ingest):.0f} docs/s"
        )
        rebuild = [seconds(lambda s=s: deployment.rebuild(s)) for s in range(4)]
        print(f"rebuild incl. the index_matches_store check, per shard: median {statistics.median(rebuild):.1f} s")
        freshness = deployment.defs.resolve_sensor_def("index_freshness")
        context = build_sensor_context(instance=deployment.instance, resources=deployment.resources)
        ticks = [seconds(lambda: freshness(context)) for _ in range(3)]
        print(f"index_freshness tick: median {statistics.median(ticks):.2f} s")
        print(f"search, all indexed: {search_latencies(deployment)}")
        for n in range(args.files, args.files + args.files // 100):
            deployment.drop(f"new/n{n:06d}.txt", f"fresh note {n} about word{n % 997} word{n % 991}")
        deployment.sync(rebuild=False)
        print(f"search, {args.files // 100} vectors pending (exact scan): {search_latencies(deployment)}")
        print(f"grace stats: {seconds(deployment.stats):.2f} s")
        print(f"index_matches_store check alone: {seconds(deployment.check):.1f} s")


if __name__ == "__main__":
    main()

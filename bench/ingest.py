"""Pipeline throughput vs raw model.encode on the same chunks, same process, same run.

    .venv/bin/python bench/ingest.py [--documents 60] [--words 1200] [--repeats 3]

Each repeat starts from an empty state directory: a sensor tick plus one `materialize`
of documents -> chunks -> embeddings per shard (real Dagster, real model, SQLite), then
`model.encode` on exactly the chunk texts the pipeline embedded. The model is loaded
once, before timing; its cold load is reported on its own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import documents  # noqa: E402
from grace.resources.embedder import EmbedderResource  # noqa: E402
from tests.harness import Deployment  # noqa: E402


def one_repeat(corpus: dict[str, str], embedder: EmbedderResource) -> tuple[int, float, float]:
    with tempfile.TemporaryDirectory() as folder:
        deployment = Deployment(Path(folder), None, embedder, shards=4, max_bytes="20MB")
        for name, text in corpus.items():
            deployment.drop(name, text)
        started = time.perf_counter()
        deployment.sync(rebuild=False)
        pipeline_seconds = time.perf_counter() - started
        store, model = deployment.store, embedder.get()
        texts = [text for shard in range(4) for _hash, text in _embedded_texts(store, shard, model.model_id)]
        started = time.perf_counter()
        model.encode(texts)
        raw_seconds = time.perf_counter() - started
        store.dispose()
    return len(texts), pipeline_seconds, raw_seconds


def _embedded_texts(store, shard: int, model_id: str):
    ids = store.embedded_chunk_ids(shard, 4, model_id)
    hits = store.chunk_hits([int(i) for i in ids])
    unique = {hit.text for hit in hits.values()}
    return [(None, text) for text in sorted(unique)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=60)
    parser.add_argument("--words", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    corpus = documents(args.documents, args.words)
    embedder = EmbedderResource()
    started = time.perf_counter()
    embedder.get().encode(["warm up"])
    print(f"model cold load + first encode: {time.perf_counter() - started:.2f} s")
    ratios, pipeline_rates, raw_rates = [], [], []
    for repeat in range(args.repeats):
        chunks, pipeline_seconds, raw_seconds = one_repeat(corpus, embedder)
        pipeline_rates.append(chunks / pipeline_seconds)
        raw_rates.append(chunks / raw_seconds)
        ratios.append(pipeline_rates[-1] / raw_rates[-1])
        print(
            f"repeat {repeat + 1}: {chunks} chunks; pipeline {pipeline_rates[-1]:.2f} chunks/s "
            f"({pipeline_seconds:.1f} s); raw encode {raw_rates[-1]:.2f} chunks/s ({raw_seconds:.1f} s); "
            f"ratio {ratios[-1]:.3f}"
        )
    print(
        f"median: pipeline {statistics.median(pipeline_rates):.2f} chunks/s, raw {statistics.median(raw_rates):.2f} "
        f"chunks/s, ratio {statistics.median(ratios):.3f} (goal >= 0.9)"
    )


if __name__ == "__main__":
    main()

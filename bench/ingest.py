"""Pipeline throughput vs raw model.encode on the same chunks, same process, same run, for each backend.

    .venv/bin/python bench/ingest.py [--documents 60] [--words 1200] [--repeats 3] [--json]

Each repeat starts from an empty state directory: a sensor tick plus one `materialize`
of documents -> chunks -> embeddings per shard (real Dagster, real model, SQLite), then
`model.encode` on exactly the chunk texts the pipeline embedded. Each backend's model is
loaded once, before timing; its cold load is reported on its own. With --json, one object on
the last line: backends maps torch and onnx-int8 to {raw_cps, pipeline_cps, ratio} (chunks/s,
medians), and onnx_speedup is onnx-int8 raw / torch raw.
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

from bench.corpus import documents  # noqa: E402
from grace.resources.embedding.onnx_model import model_cache_root  # noqa: E402
from grace.resources.wiring.dagster_resources import EmbedderResource  # noqa: E402
from tests.helpers.harness import Deployment  # noqa: E402


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
    ids = store.index_delta.embedded_chunk_ids(shard, 4, model_id)
    hits = store.texts.chunk_hits([int(i) for i in ids])
    unique = {hit.text for hit in hits.values()}
    return [(None, text) for text in sorted(unique)]


def measure(backend: str, corpus: dict[str, str], repeats: int) -> dict:
    embedder = EmbedderResource(backend=backend, cache_root=str(model_cache_root(Path(".grace").resolve())))
    started = time.perf_counter()
    embedder.get().encode(["warm up"])
    print(f"{backend}: model cold load + first encode: {time.perf_counter() - started:.2f} s")
    ratios, pipeline_rates, raw_rates = [], [], []
    for repeat in range(repeats):
        chunks, pipeline_seconds, raw_seconds = one_repeat(corpus, embedder)
        pipeline_rates.append(chunks / pipeline_seconds)
        raw_rates.append(chunks / raw_seconds)
        ratios.append(pipeline_rates[-1] / raw_rates[-1])
        print(
            f"{backend} repeat {repeat + 1}: {chunks} chunks; pipeline {pipeline_rates[-1]:.2f} chunks/s "
            f"({pipeline_seconds:.1f} s); raw encode {raw_rates[-1]:.2f} chunks/s ({raw_seconds:.1f} s); "
            f"ratio {ratios[-1]:.3f}"
        )
    figures = {
        "raw_cps": round(statistics.median(raw_rates), 2),
        "pipeline_cps": round(statistics.median(pipeline_rates), 2),
        "ratio": round(statistics.median(ratios), 3),
    }
    print(
        f"{backend} median: pipeline {figures['pipeline_cps']} chunks/s, raw {figures['raw_cps']} chunks/s, "
        f"ratio {figures['ratio']} (goal >= 0.9)"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=60)
    parser.add_argument("--words", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last")
    args = parser.parse_args()
    corpus = documents(args.documents, args.words)
    backends = {backend: measure(backend, corpus, args.repeats) for backend in ("torch", "onnx-int8")}
    speedup = round(backends["onnx-int8"]["raw_cps"] / backends["torch"]["raw_cps"], 2)
    print(f"onnx_speedup (onnx-int8 raw / torch raw): {speedup} (goal >= 1.8)")
    if args.json:
        print(json.dumps({"backends": backends, "onnx_speedup": speedup, "documents": args.documents}))


if __name__ == "__main__":
    main()

"""How close the onnx-int8 backend comes to torch, and how much faster it is, on real text.

    .venv/bin/python bench/embed_quality.py [--chunks 320] [--queries 50] [--rounds 6] [--cache DIR] [--json]

The corpus is real English: the standard library's own documentation (pydoc text of common
modules) and Grace's README and docs pages, cut by Grace's chunker into chunks of up to 256 tokens. Queries are
the first lines of public functions' docstrings, which read like what a person searches for.
Both backends encode the same chunks in one process: onnx-int8 first, so its ready time is
measured before torch is imported. Figures: per-chunk cosine between the backends (mean, min),
recall@10 (onnx-int8's exact top 10 over its own vectors against torch's over torch's, averaged
over the queries), and chunks per second for each backend. On a shared machine one timing of each
says little, so speed_ratio (onnx-int8 chunks/s over torch's) is the median over --rounds rounds of
interleaved pairs: each round times torch and onnx-int8 back to back on each quarter of the chunks,
alternating which goes first. Gates: mean_cos >= 0.99, recall_at_10 >= 0.95 and speed_ratio >= 1.8.
The model cache is --cache, else $GRACE_MODEL_CACHE, else a temporary folder.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import pydoc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grace.resources.embedding.embedder import Embedder  # noqa: E402
from grace.resources.embedding.onnx_model import CACHE_VARIABLE, ensure_onnx_model  # noqa: E402
from grace.resources.text.chunking import Chunker  # noqa: E402

MODULES = [
    "os", "pathlib", "json", "re", "argparse", "logging", "subprocess", "collections", "itertools", "functools",
    "shutil", "tempfile", "datetime", "threading", "sqlite3", "csv", "random", "statistics", "textwrap", "string",
]  # fmt: skip
REPOSITORY = Path(__file__).resolve().parents[1]
GRACE_PAGES = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
GATES = {"mean_cos": 0.99, "recall_at_10": 0.95, "speed_ratio": 1.8}
SLICES = 4
K = 10


def corpus(chunker: Chunker, limit: int) -> list[str]:
    standard_library = [pydoc.render_doc(name, renderer=pydoc.plaintext) for name in MODULES]
    texts = [page.read_text() for page in GRACE_PAGES] + standard_library
    chunks = [chunk.text for text in texts for chunk in chunker.split(text)]
    return chunks[:: max(1, len(chunks) // limit)][:limit]  # spread over every module, not the first few


def queries(limit: int) -> list[str]:
    found: list[str] = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attribute, value in sorted(vars(module).items()):
            doc = inspect.getdoc(value) if inspect.isfunction(value) and not attribute.startswith("_") else None
            first = doc.strip().splitlines()[0].strip() if doc else ""
            if len(first.split()) >= 4 and first not in found:
                found.append(first)
    return found[:: max(1, len(found) // limit)][:limit]


def timed_encode(embedder: Embedder, texts: list[str]) -> tuple[np.ndarray, float]:
    embedder.encode(texts[:4])  # warm: first runs allocate
    started = time.perf_counter()
    vectors = embedder.encode(texts)
    return vectors, len(texts) / (time.perf_counter() - started)


def interleaved_ratios(onnx: Embedder, torch: Embedder, texts: list[str], rounds: int) -> list[float]:
    """onnx-int8 over torch speed, one figure per back-to-back pair, so both see the same machine load."""
    ratios = []
    for round_number in range(rounds):
        for start in range(SLICES):
            part = texts[start::SLICES]  # every quarter spans short and long chunks alike
            pair = [torch, onnx] if (round_number + start) % 2 == 0 else [onnx, torch]
            seconds = {}
            for embedder in pair:
                started = time.perf_counter()
                embedder.encode(part)
                seconds[embedder.backend] = time.perf_counter() - started
            ratios.append(seconds["torch"] / seconds["onnx-int8"])
    return ratios


def top_k(vectors: np.ndarray, query_vectors: np.ndarray) -> np.ndarray:
    return np.argsort(-(query_vectors @ vectors.T), axis=1)[:, :K]


def measure(chunk_limit: int, query_limit: int, cache_root: Path, rounds: int) -> dict:
    onnx = Embedder(backend="onnx-int8", cache_root=cache_root)
    started = time.perf_counter()
    ensure_onnx_model(cache_root, onnx.model_dir, onnx.name, log=lambda message: print(f"  {message}"))
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    onnx.encode(["ready"])
    ready_s = time.perf_counter() - started
    chunker = Chunker(onnx.tokenizer_file, 256, 32)
    chunks, asked = corpus(chunker, chunk_limit), queries(query_limit)
    onnx_vectors, onnx_cps = timed_encode(onnx, chunks)
    onnx_queries = onnx.encode(asked)
    torch = Embedder(backend="torch")
    torch_vectors, torch_cps = timed_encode(torch, chunks)
    torch_queries = torch.encode(asked)
    cosines = (onnx_vectors * torch_vectors).sum(axis=1)
    ours, theirs = top_k(onnx_vectors, onnx_queries), top_k(torch_vectors, torch_queries)
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(ours, theirs)])
    ratios = interleaved_ratios(onnx, torch, chunks, rounds)
    return {
        "chunks": len(chunks),
        "mean_tokens": round(float(np.mean([chunker.count_tokens(text) for text in chunks])), 1),
        "queries": len(asked),
        "mean_cos": round(float(cosines.mean()), 4),
        "min_cos": round(float(cosines.min()), 4),
        "recall_at_10": round(float(recall), 4),
        "torch_cps": round(torch_cps, 1),
        "onnx_cps": round(onnx_cps, 1),
        "speed_ratio": round(float(np.median(ratios)), 2),
        "speed_ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
        "onnx_ensure_s": round(build_s, 2),
        "onnx_ready_s": round(ready_s, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=320)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6, help="rounds of interleaved speed pairs (default 6)")
    parser.add_argument("--cache", type=Path, help="model cache folder (default: $GRACE_MODEL_CACHE or a temp dir)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object of every figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cache_root = args.cache or Path(os.environ.get(CACHE_VARIABLE) or scratch)
        figures = measure(args.chunks, args.queries, cache_root, max(1, args.rounds))
    for name, value in figures.items():
        print(f"{name:>14}: {value}")
    passed = True
    for name, floor in GATES.items():
        ok = figures[name] >= floor
        passed &= ok
        print(f"{'PASS' if ok else 'FAIL'} {name} {figures[name]} >= {floor}")
    if args.json:
        print(json.dumps(figures | {"passed": passed}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""`grace search` and `grace status` from the shell: the whole command, process start to exit, on a real store.

    .venv/bin/python bench/cli.py [--documents 200] [--words 300] [--calls 10] [--backend onnx-int8] [--json]

Builds a store of --documents files in a temporary folder (a sensor tick, then one `materialize`
of the ingest assets and one index rebuild per shard: real Dagster, the real model with the
chosen backend, SQLite, 4 shards), then runs `grace search "<query>"` as a subprocess: one warm-up
call, then --calls timed ones; then `grace status --json` the same way (status_p50_s; no grace dev
runs, so it reads the store, the key file and the Dagster home, and finds no daemon). A breakdown
(imports, manifest, opening store and vault, first encode with the model load, the query over store
and index) is measured once, in a fresh process, with perf_counter. --json ends the output with one
JSON object of the figures. With onnx-int8, set GRACE_MODEL_CACHE to a folder kept between runs, or
the model is built into the temporary one first.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import documents  # noqa: E402
from bench.freshness import percentile  # noqa: E402
from grace.core.manifest import EmbeddingConfig  # noqa: E402
from grace.resources.embedding.embedder import OFFLINE_ENVIRONMENT  # noqa: E402
from tests.helpers.harness import Deployment  # noqa: E402

QUERY = "how to parse command line arguments into a namespace"

# Run in a fresh interpreter: each step as the CLI takes it, timed on its own.
BREAKDOWN = """
import json, sys, time
started = time.perf_counter()
import grace.cli.main
from grace.api import searcher
from grace.core.manifest import load_manifest
from grace.resources.wiring.services import open_searcher
imported = time.perf_counter()
manifest = load_manifest(sys.argv[1])
loaded = time.perf_counter()
found = open_searcher(manifest)
opened = time.perf_counter()
vector = found.embedder.encode([sys.argv[2]])[0]
encoded = time.perf_counter()
hits = found.search_vector(vector, 5)
queried = time.perf_counter()
print(json.dumps({
    "import_s": imported - started, "manifest_s": loaded - imported, "open_s": opened - loaded,
    "encode_s": encoded - opened, "query_s": queried - encoded, "hits": len(hits),
    "heavy_modules": sorted(m for m in ("dagster", "torch", "sentence_transformers", "transformers", "alembic")
                            if m in sys.modules),
}))
"""


def build_store(root: Path, count: int, words: int, backend: str) -> Path:
    """A deployment in root with count documents ingested and indexed; its grace.yaml."""
    # No embedder given: the manifest's own, so the CLI reads the backend the store was embedded with.
    deployment = Deployment(root, None, None, shards=4, max_bytes="1MB", embedding_backend=backend)
    manifest_path = root / "grace.yaml"
    for name, text in documents(count, words).items():
        deployment.drop(name, text)
    runs_log = io.StringIO()  # Dagster logs every step of every run; shown only if a run fails
    try:
        with contextlib.redirect_stderr(runs_log):
            deployment.sync(rebuild=True)
    except BaseException:
        print(runs_log.getvalue()[-20000:], file=sys.stderr)
        raise
    totals = deployment.stats()["total"]
    assert totals["documents_active"] == count, totals
    assert totals["index_coverage"] == 1.0, totals
    deployment.store.dispose()
    return manifest_path


def grace_command() -> list[str]:
    script = Path(sys.executable).with_name("grace")
    return [str(script)] if script.exists() else [sys.executable, "-m", "grace.cli.main"]


def time_calls(manifest_path: Path, arguments: list[str], expected: str, calls: int, environment: dict) -> list[float]:
    """Seconds of each of calls runs of `grace <arguments> -c grace.yaml`, after one warm-up run."""
    command = [*grace_command(), *arguments, "-c", str(manifest_path)]
    latencies = []
    for call in range(calls + 1):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=manifest_path.parent)
        elapsed = time.perf_counter() - started
        if done.returncode != 0 or expected not in done.stdout:
            raise SystemExit(f"grace {arguments[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        if call:  # the first is the warm-up: page cache, first build of anything cached on disk
            latencies.append(elapsed)
        print(f"grace {arguments[0]} call {call or 'warm-up'}: {elapsed:.3f} s")
    return latencies


def breakdown(manifest_path: Path, environment: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", BREAKDOWN, str(manifest_path), QUERY],
        capture_output=True,
        text=True,
        env=environment,
        cwd=manifest_path.parent,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--backend", default=EmbeddingConfig().backend, help="default: grace.yaml's default")
    parser.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = parser.parse_args()
    environment = {**os.environ, **OFFLINE_ENVIRONMENT}
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        manifest_path = build_store(Path(folder), args.documents, args.words, args.backend)
        print(f"store of {args.documents} documents ({args.backend}) built in {time.perf_counter() - started:.1f} s")
        latencies = time_calls(manifest_path, ["search", QUERY], " 1. ", args.calls, environment)
        status_latencies = time_calls(manifest_path, ["status", "--json"], '"store"', args.calls, environment)
        parts = breakdown(manifest_path, environment)
    figures = {
        "search_p50_s": round(statistics.median(latencies), 3),
        "search_p95_s": round(percentile(latencies, 0.95), 3),
        "status_p50_s": round(statistics.median(status_latencies), 3),
        "calls": len(latencies),
        "documents": args.documents,
        "backend": args.backend,
        **{key: round(value, 3) if isinstance(value, float) else value for key, value in parts.items()},
    }
    print(f"grace search: p50 {figures['search_p50_s']:.3f} s, p95 {figures['search_p95_s']:.3f} s")
    print(f"grace status (no grace dev running): p50 {figures['status_p50_s']:.3f} s")
    print(", ".join(f"{key} {figures[key]:.3f}" for key in ("import_s", "manifest_s", "open_s", "encode_s", "query_s")))
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

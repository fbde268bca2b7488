"""Search through the HTTP API (`grace serve`) under concurrent clients, against Searcher.search in process.

    .venv/bin/python bench/api.py [--chunks 10000] [--clients 8] [--requests 400] [--json]

Builds a store of --chunks one-chunk documents in a temporary folder (real Dagster, the real model with
onnx-int8, SQLite, 4 shards, every shard indexed), starts `grace serve` on it as a subprocess on
127.0.0.1, and sends --requests POST /api/vectors/search requests (top_k 10, 200 distinct queries) from
--clients threads, each on its own keep-alive connection: search_rps, search_p50_ms, search_p95_ms.
Also measured: one client alone (the API's own overhead per request), the in-process baseline
(Searcher.search on the same queries, one after another, in this process), their ratios, and
`grace search` from the shell with the server up and with --local. With --json, the last line is one
JSON object of the figures. Set GRACE_MODEL_CACHE to a folder kept between runs, or the model is built first.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cli import grace_command  # noqa: E402
from bench.corpus import documents  # noqa: E402
from bench.freshness import percentile  # noqa: E402
from grace.http.client import read_discovery  # noqa: E402
from grace.resources.embedding.embedder import OFFLINE_ENVIRONMENT  # noqa: E402
from grace.resources.wiring.services import open_searcher  # noqa: E402
from tests.helpers.harness import Deployment  # noqa: E402

QUERIES = [
    f"{verb} {thing} with {other}"
    for verb in ("parse", "join", "sort", "open", "format")
    for thing in (
        "a path",
        "the arguments",
        "json data",
        "log records",
        "an iterator",
        "dictionary keys",
        "text",
        "a tuple",
    )
    for other in ("options", "defaults", "a namespace", "errors", "encodings")
]
TOP_K = 10


def build_store(root: Path, chunks: int) -> Path:
    """A deployment in root of `chunks` one-chunk documents, ingested and indexed; its grace.yaml."""
    deployment = Deployment(root, None, None, shards=4, max_bytes="1MB", trees=50, embedding_backend="onnx-int8")
    for name, text in documents(chunks, 40).items():
        deployment.drop(name, text)
    runs_log = io.StringIO()  # Dagster logs every step; shown only if a run fails
    try:
        with contextlib.redirect_stderr(runs_log):
            for _tick in range(50):  # a tick records files for a few seconds; the next goes on
                if not deployment.sync(rebuild=False):
                    break
            for shard in range(4):
                assert deployment.rebuild(shard).success
    except BaseException:
        print(runs_log.getvalue()[-20000:], file=sys.stderr)
        raise
    totals = deployment.stats()["total"]
    assert totals["chunks"] == chunks and totals["index_coverage"] == 1.0, totals
    deployment.store.dispose()
    return root / "grace.yaml"


def start_server(config: Path, environment: dict[str, str]) -> tuple[subprocess.Popen, str]:
    command = [*grace_command(), "serve", "-c", str(config), "--port", "0", "--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, env=environment)
    from grace.core.manifest import load_manifest

    manifest = load_manifest(config)
    deadline = time.monotonic() + 120
    while (found := read_discovery(manifest)) is None or found["pid"] != process.pid:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"grace serve did not start (exit {process.poll()})")
        time.sleep(0.05)
    return process, found["url"]


def hammer(url: str, clients: int, requests: int) -> tuple[list[float], float]:
    """(latency of each request in ms, wall seconds) for requests spread over client threads."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        mine = []
        for index in range(number, requests, clients):
            body = json.dumps({"query": QUERIES[index % len(QUERIES)], "top_k": TOP_K})
            started = time.perf_counter()
            connection.request("POST", "/api/vectors/search", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            mine.append((time.perf_counter() - started) * 1000)
            if response.status != 200 or len(answer["results"]) != TOP_K:
                failures.append(f"{response.status}: {str(answer)[:200]}")
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures or len(latencies) != requests:
        raise SystemExit(f"{len(failures)} failed requests, {len(latencies)} of {requests} answered: {failures[:3]}")
    return latencies, wall


def in_process(config: Path, requests: int) -> tuple[list[float], float]:
    """Searcher.search on the same queries, one after another, after a warm-up: (latencies ms, wall s)."""
    from grace.core.manifest import load_manifest

    searcher = open_searcher(load_manifest(config))
    for query in QUERIES[:40]:  # the same warm-up as the server gets: model, index files, page cache
        searcher.search(query, TOP_K)
    latencies = []
    started = time.perf_counter()
    for index in range(requests):
        began = time.perf_counter()
        assert len(searcher.search(QUERIES[index % len(QUERIES)], TOP_K)) == TOP_K
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies, time.perf_counter() - started


def cli_seconds(config: Path, environment: dict[str, str], extra: list[str], calls: int = 5) -> list[float]:
    command = [*grace_command(), "search", QUERIES[0], "-c", str(config), *extra]
    times = []
    for call in range(calls + 1):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=environment)
        if done.returncode != 0 or " 1. " not in done.stdout:
            raise SystemExit(f"grace search failed: {done.stderr}")
        if call:  # the first is a warm-up
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = parser.parse_args()
    environment = {**os.environ, **OFFLINE_ENVIRONMENT}
    os.environ.update(OFFLINE_ENVIRONMENT)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        config = build_store(Path(folder), args.chunks)
        print(f"store of {args.chunks} chunks built in {time.perf_counter() - started:.1f} s", flush=True)
        baseline, baseline_wall = in_process(config, args.requests)
        process, url = start_server(config, environment)
        try:
            hammer(url, args.clients, min(args.requests, 40))  # warm-up: connections, page cache
            single, _single_wall = hammer(url, 1, args.requests // 2)
            latencies, wall = hammer(url, args.clients, args.requests)
            cli_warm = cli_seconds(config, environment, [])
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        cli_local = cli_seconds(config, environment, ["--local"])
    figures = {
        "search_rps": round(args.requests / wall, 1),
        "search_p50_ms": round(statistics.median(latencies), 1),
        "search_p95_ms": round(percentile(latencies, 0.95), 1),
        "clients": args.clients,
        "requests": args.requests,
        "chunks": args.chunks,
        "single_client_p50_ms": round(statistics.median(single), 1),
        "single_client_p95_ms": round(percentile(single, 0.95), 1),
        "in_process_rps": round(args.requests / baseline_wall, 1),
        "in_process_p50_ms": round(statistics.median(baseline), 1),
        "in_process_p95_ms": round(percentile(baseline, 0.95), 1),
        "cli_warm_p50_s": round(statistics.median(cli_warm), 3),
        "cli_local_p50_s": round(statistics.median(cli_local), 3),
    }
    figures["rps_ratio"] = round(figures["search_rps"] / figures["in_process_rps"], 2)
    figures["single_client_p50_ratio"] = round(figures["single_client_p50_ms"] / figures["in_process_p50_ms"], 2)
    print(
        f"HTTP, {args.clients} clients: {figures['search_rps']} req/s, p50 {figures['search_p50_ms']} ms, "
        f"p95 {figures['search_p95_ms']} ms; one client: p50 {figures['single_client_p50_ms']} ms"
    )
    print(
        f"in process: {figures['in_process_rps']} req/s, p50 {figures['in_process_p50_ms']} ms, p95 "
        f"{figures['in_process_p95_ms']} ms; ratio of req/s {figures['rps_ratio']}, of one-client p50 "
        f"{figures['single_client_p50_ratio']}"
    )
    print(f"grace search: warm server p50 {figures['cli_warm_p50_s']} s, --local p50 {figures['cli_local_p50_s']} s")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

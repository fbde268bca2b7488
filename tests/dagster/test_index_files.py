"""Damaged index files: verified before Annoy maps them, searched exactly, reported, rebuilt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dagster import RunRequest, build_sensor_context

from grace.resources.index.vector_index import POINTER, IndexCorrupt, ShardedIndex
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment

ROOT = Path(__file__).resolve().parents[2]
TAIL_BYTES_FLIPPED = 300

# Searches with the fake embedder in a fresh process, so a crash in Annoy shows as a signal.
SEARCH_IN_SUBPROCESS = """
import json, sys
from grace.core.manifest import load_manifest
from grace.resources.wiring.dagster_resources import build_resources
from grace.resources.index.search import Searcher
from tests.helpers.fakes import HashingEmbedder

resources = build_resources(load_manifest(sys.argv[1]))
searcher = Searcher(resources["store"].get(), resources["vector_index"].get(), HashingEmbedder(), "dense")
k, queries = int(sys.argv[2]), sys.argv[3:]
print(json.dumps([[[hit.chunk_id, hit.score] for hit in searcher.search(query, k)] for query in queries]))
"""


def truncate_to_whole_nodes(index: ShardedIndex, shard: int) -> None:
    """Keep half the nodes: Annoy accepts the size and, before verification, crashed with SIGSEGV."""
    path = index_file(index, shard)
    node_bytes = 12 + 4 * index.current(shard).dimension  # Annoy's angular node: 3 int32, then the vector
    data = path.read_bytes()
    path.write_bytes(data[: (len(data) // node_bytes // 2) * node_bytes])


def flip_tail(index: ShardedIndex, shard: int) -> None:
    """Same size, damaged roots: before verification, Annoy aborted the process."""
    path = index_file(index, shard)
    data = bytearray(path.read_bytes())
    for position in range(len(data) - TAIL_BYTES_FLIPPED, len(data)):
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def index_file(index: ShardedIndex, shard: int) -> Path:
    return index.shard_dir(shard) / index.current(shard).index_file


def exact_top(deployment: Deployment, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of the exact top k over every searchable chunk."""
    shards, model_id = deployment.manifest.index.shards, deployment.embedder.model_id
    delta = deployment.store.index_delta
    searchable = np.concatenate([delta.embedded_chunk_ids(s, shards, model_id) for s in range(shards)])
    ids, vectors = deployment.store.embeddings.vectors_of(searchable, deployment.embedder.model_id)
    scores = vectors @ deployment.embedder.encode([query])[0]
    best = np.argsort(-scores, kind="stable")[:k]
    return ids[best], scores[best]


def freshness_requests(deployment: Deployment) -> list[RunRequest]:
    """One real evaluation of the index_freshness sensor (a SensorResult: requests, index_status's report)."""
    context = build_sensor_context(instance=deployment.instance, resources=deployment.resources)
    return list(deployment.defs.resolve_sensor_def("index_freshness")(context).run_requests or [])


def search_in_subprocess(deployment: Deployment, queries: list[str], k: int) -> list[list[list]]:
    """[[chunk id, score] of each hit] for each query, searched by a fresh process."""
    config = str(deployment.root / "grace.yaml")
    done = subprocess.run(
        [sys.executable, "-c", SEARCH_IN_SUBPROCESS, config, str(k), *queries],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_damaged_shards_are_searched_exactly_reported_and_rebuilt(tmp_path, store_url):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=3)
    for number in range(60):
        deployment.drop(f"note{number}.txt", f"note {number} on topic{number % 7} with words w{number * 3} x{number}")
    deployment.sync()
    truncate_to_whole_nodes(deployment.index, 0)
    flip_tail(deployment.index, 1)

    queries = ["topic3 words", "note 17 on topic2", "w42 x14"]
    for query, found in zip(queries, search_in_subprocess(deployment, queries, 8), strict=True):
        assert np.allclose([score for _id, score in found], exact_top(deployment, query, 8)[1], atol=1e-5)
        # Ties may come in either order; every hit must carry its own exact score.
        exact_of = dict(zip(*exact_top(deployment, query, 60)))
        assert all(abs(exact_of[chunk_id] - score) < 1e-5 for chunk_id, score in found)

    shards = deployment.stats()["shards"]
    assert [row["index_coverage"] for row in shards] == [0.0, 0.0, 1.0]
    assert "bytes" in shards[0]["index_problem"] and "checksum" in shards[1]["index_problem"]
    assert shards[2]["index_problem"] is None and deployment.stats()["total"]["index_coverage"] < 1

    requests = freshness_requests(deployment)
    assert sorted(int(request.partition_key) for request in requests) == [0, 1]
    assert {request.tags["grace/rebuild_reason"] for request in requests} == {"index files damaged"}
    for request in requests:
        assert deployment.rebuild(int(request.partition_key)).success
    stats = deployment.stats()
    assert [row["index_coverage"] for row in stats["shards"]] == [1.0, 1.0, 1.0]
    assert all(row["index_problem"] is None for row in stats["shards"])
    assert freshness_requests(deployment) == []
    [found] = search_in_subprocess(deployment, ["topic3 words"], 8)
    assert np.allclose([score for _id, score in found], exact_top(deployment, "topic3 words", 8)[1], atol=1e-5)


def test_grace_search_and_stats_survive_a_damaged_shard_on_the_real_model(tmp_path):
    deployment = Deployment(tmp_path, None, EmbedderResource(), shards=2)
    deployment.drop("whales.txt", "Blue whales are the largest animals ever known to have lived.")
    deployment.drop("trains.md", "The night train to Vienna leaves from platform nine at 22:40.")
    deployment.drop("bread.txt", "Sourdough bread rises slowly because wild yeast is patient.")
    deployment.sync()
    damaged = next(shard for shard in range(2) if deployment.index.current(shard).items)
    truncate_to_whole_nodes(deployment.index, damaged)
    config = str(tmp_path / "grace.yaml")
    grace = [sys.executable, "-m", "grace.cli.main"]

    search = subprocess.run(
        [*grace, "search", "huge ocean mammal", "-k", "3", "--json", "-c", config],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    assert search.returncode == 0, search.stderr[-2000:]
    hits = json.loads(search.stdout)
    assert [hit["path"] for hit in hits][0] == "whales.txt" and len(hits) == 3

    stats = subprocess.run([*grace, "stats", "-c", config], capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert stats.returncode == 0, stats.stderr[-2000:]
    assert f"index damaged: shard {damaged}: " in stats.stdout and "searched exactly until" in stats.stdout
    total_line = next(line for line in stats.stdout.splitlines() if line.split()[0] == "all")
    assert "1.000" not in total_line


@pytest.fixture
def index(tmp_path) -> ShardedIndex:
    index = ShardedIndex(tmp_path, shards=1, trees=5, search_k=1000)
    vectors = np.random.default_rng(0).normal(size=(100, 16)).astype(np.float32)
    index.build(0, np.arange(100, dtype=np.int64), vectors / np.linalg.norm(vectors, axis=1, keepdims=True), "m@1")
    return index


def test_pointers_from_before_sizes_were_recorded_load_and_are_verified_by_checksum(index):
    pointer = index.shard_dir(0) / POINTER
    recorded = json.loads(pointer.read_text())
    assert recorded["index_bytes"] == index_file(index, 0).stat().st_size
    del recorded["index_bytes"]
    pointer.write_text(json.dumps(recorded))
    assert index.current(0).index_bytes is None and index.load(0).meta.items == 100
    flip_tail(index, 0)
    with pytest.raises(IndexCorrupt, match="shard 0: .* does not match its checksum"):
        index.load(0)


def test_a_file_damaged_after_this_process_loaded_it_is_verified_again(index):
    assert index.load(0).meta.items == 100
    path = index_file(index, 0)
    size = path.stat().st_size
    truncate_to_whole_nodes(index, 0)
    with pytest.raises(IndexCorrupt, match=f"is {path.stat().st_size} bytes, it was built with {size}"):
        index.load(0)
    os.truncate(path, 0)
    with pytest.raises(IndexCorrupt, match="it was built with"):
        index.verify(0)

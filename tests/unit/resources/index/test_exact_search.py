"""Small shards are searched exactly; large ones by Annoy with the whole search_k each; old pointers still load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from grace.resources.index.vector_index import POINTER, IndexCorrupt, ShardedIndex

DIMENSION = 384  # the shipped model's, so Annoy's leaves and splits behave as in production


def near_duplicates(count: int, seed: int, clusters: int = 5, spread: float = 0.05) -> np.ndarray:
    """Skewed vectors: a few tight clusters of near-copies, as folders of versions and templates give."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIMENSION))
    vectors = centers[rng.integers(0, clusters, count)] + spread * rng.standard_normal((count, DIMENSION))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def exact_top(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = vectors @ (query / np.linalg.norm(query))
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return ids[order].tolist()


def recall_at(index: ShardedIndex, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> float:
    loaded = index.load(0)
    found = [set(loaded.nearest(query, k, index.search_k_per_shard)[0].tolist()) for query in queries]
    return float(np.mean([len(got & set(exact_top(vectors, ids, q, k))) / k for got, q in zip(found, queries)]))


def test_a_small_shard_of_near_duplicates_is_searched_exactly(tmp_path):
    vectors = near_duplicates(446, seed=1)
    relevant = np.random.default_rng(2).standard_normal(DIMENSION).astype(np.float32)
    vectors[223] = relevant / np.linalg.norm(relevant)  # the one file unlike the others
    ids = np.arange(5000, 5446, dtype=np.int64)
    index = ShardedIndex(tmp_path, shards=4, trees=50, search_k=25_000)
    index.build(0, ids, vectors, "m@1")
    loaded = index.load(0)
    assert loaded.exact and (index.shard_dir(0) / loaded.meta.vectors_file).exists()
    query = 0.654 * vectors[223] + 0.757 * near_duplicates(1, seed=3)[0]
    found, scores = loaded.nearest(query, 10, index.search_k_per_shard)
    assert found[0] == 5223, "the one relevant vector ranks first"
    assert found.tolist() == exact_top(vectors, ids, query, 10)
    assert np.all(np.diff(scores) <= 0) and abs(scores[0] - float(vectors[223] @ query / np.linalg.norm(query))) < 1e-5
    queries = near_duplicates(50, seed=4) + 0.1 * np.random.default_rng(5).standard_normal((50, DIMENSION))
    assert recall_at(index, vectors, ids, queries.astype(np.float32), 10) == 1.0


def test_asking_for_more_than_the_shard_holds_returns_all_of_it_best_first(tmp_path):
    vectors = near_duplicates(30, seed=6)
    index = ShardedIndex(tmp_path, shards=1, trees=5, search_k=10)
    index.build(0, np.arange(30, dtype=np.int64), vectors, "m@1")
    found, scores = index.load(0).nearest(vectors[3], 100, index.search_k)
    assert sorted(found.tolist()) == list(range(30)) and found[0] == 3 and np.all(np.diff(scores) <= 0)


def test_a_shard_above_the_exact_size_is_searched_by_annoy_with_the_whole_budget(tmp_path):
    vectors = near_duplicates(3000, seed=7, clusters=20, spread=0.3)
    ids = np.arange(3000, dtype=np.int64)
    index = ShardedIndex(tmp_path, shards=4, trees=50, search_k=25_000, exact_max_items=2999)
    assert index.search_k_per_shard == 25_000, "each shard gets the whole budget, not a quarter"
    index.build(0, ids, vectors, "m@1")
    loaded = index.load(0)
    assert not loaded.exact and loaded.meta.vectors_file is None
    assert not list(index.shard_dir(0).glob("*.vectors.npy"))
    rng = np.random.default_rng(8)
    queries = vectors[rng.integers(0, 3000, 100)] + 0.3 * rng.standard_normal((100, DIMENSION))
    assert recall_at(index, vectors, ids, queries.astype(np.float32), 10) >= 0.99


def test_a_pointer_from_before_exact_search_loads_and_is_searched_by_annoy(tmp_path):
    vectors = near_duplicates(100, seed=9)
    index = ShardedIndex(tmp_path, shards=1, trees=10, search_k=10_000)
    meta = index.build(0, np.arange(100, dtype=np.int64), vectors, "m@1")
    pointer_path = index.shard_dir(0) / POINTER
    pointer = json.loads(pointer_path.read_text())
    (index.shard_dir(0) / pointer.pop("vectors_file")).unlink()
    pointer.pop("vectors_sha256")
    pointer_path.write_text(json.dumps(pointer))
    loaded = index.verify(0)
    assert not loaded.exact and loaded.meta.version == meta.version
    assert loaded.nearest(vectors[42], 1, index.search_k)[0].tolist() == [42]


def test_a_damaged_vectors_file_is_found_by_verify(tmp_path):
    index = ShardedIndex(tmp_path, shards=1, trees=10, search_k=10_000)
    meta = index.build(0, np.arange(100, dtype=np.int64), near_duplicates(100, seed=10), "m@1")
    path = index.shard_dir(0) / meta.vectors_file
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF  # a score would silently change: the checksum must catch it
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="vectors.npy does not match its checksum"):
        index.verify(0)

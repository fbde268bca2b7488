"""Sharded Annoy indexes: atomic swaps, readers during rebuilds, corruption detection."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from grace.resources.index.vector_index import POINTER, IndexCorrupt, ShardedIndex


def random_vectors(count: int, seed: int = 0, dimension: int = 16) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def index(tmp_path):
    return ShardedIndex(tmp_path, shards=2, trees=10, search_k=10_000)


def test_build_then_load_finds_exact_neighbours_on_a_small_set(index):
    vectors = random_vectors(200)
    ids = np.arange(1000, 1200, dtype=np.int64)
    meta = index.build(0, ids, vectors, "m@1")
    assert meta.items == 200 and index.current(0) == meta and index.current(1) is None
    loaded = index.load(0)
    found, scores = loaded.nearest(vectors[17], 5, index.search_k)
    exact = vectors @ vectors[17]
    assert list(found) == list(ids[np.argsort(-exact)[:5]])
    assert np.allclose(scores, np.sort(exact)[::-1][:5], atol=1e-5)


def test_empty_shard_builds_and_answers_nothing(index):
    index.build(1, np.empty(0, dtype=np.int64), np.empty((0, 16), dtype=np.float32), "m@1")
    ids, scores = index.load(1).nearest(random_vectors(1)[0], 5, 100)
    assert len(ids) == 0 and len(scores) == 0


def test_swap_is_atomic_and_old_versions_are_cleaned(index):
    for generation in range(5):
        index.build(0, np.arange(10, dtype=np.int64) + generation * 100, random_vectors(10, generation), "m@1")
    folder = index.shard_dir(0)
    assert len(list(folder.glob("v*.ann"))) == 2  # current + the previous one a reader may hold
    assert not list(folder.glob("*.tmp*"))
    pointer = json.loads((folder / POINTER).read_text())
    assert (folder / pointer["index_file"]).exists()
    assert index.load(0).chunk_ids[0] == 400


def test_searches_during_rebuilds_always_see_a_whole_index(index):
    vectors = random_vectors(300)
    index.build(0, np.arange(300, dtype=np.int64), vectors, "m@1")
    failures, wrong, overlapped, swaps, stop = [], [], [], [0], threading.Event()

    def rebuild() -> None:
        while not stop.is_set():
            index.build(0, np.arange(300, dtype=np.int64) + (swaps[0] + 1) * 1000, vectors, "m@1")
            swaps[0] += 1

    def search() -> None:
        i = 0
        while not stop.is_set():
            version_before = index.current(0).version
            loaded = index.load(0)
            found, _ = loaded.nearest(vectors[i % 300], 1, index.search_k)
            if found[0] % 1000 != i % 300 or len(loaded.chunk_ids) != 300:
                wrong.append((i, found))
            if index.current(0).version != version_before:
                overlapped.append(i)  # a swap landed while this read was under way
            i += 1

    def collecting(target) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # noqa: BLE001 - reported by the assertion below
                failures.append(error)
                stop.set()

        return threading.Thread(target=run)

    threads = [collecting(rebuild), *(collecting(search) for _ in range(3))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while swaps[0] < 30 and not stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == [] and wrong == []
    assert swaps[0] >= 30, "the builder kept swapping while readers read"
    assert len(overlapped) >= 1, "no read overlapped a swap, so the test proved nothing"


def test_verify_detects_corrupt_and_missing_files(index):
    index.build(0, np.arange(50, dtype=np.int64), random_vectors(50), "m@1")
    assert index.verify(0).meta.items == 50
    meta = index.current(0)
    path = index.shard_dir(0) / meta.index_file
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="checksum"):
        index.verify(0)
    path.unlink()
    with pytest.raises(IndexCorrupt):
        index.verify(0)


def mapped_files() -> str:
    with open("/proc/self/maps") as maps:
        return maps.read()


def test_a_superseded_version_is_unmapped_once_no_search_holds_it(index):
    index.build(0, np.arange(50, dtype=np.int64), random_vectors(50), "m@1")
    first = index.load(0)
    first_file = str(index.shard_dir(0) / first.meta.index_file)
    first_vectors = str(index.shard_dir(0) / first.meta.vectors_file)
    first.nearest(random_vectors(1)[0], 5, 100)
    del first
    assert first_file in mapped_files() and first_vectors in mapped_files(), "the process maps the version it searched"
    for generation in (1, 2):  # two newer versions: the first one's files are deleted
        index.build(0, np.arange(50, dtype=np.int64) + 100 * generation, random_vectors(50, generation), "m@1")
    assert not (index.shard_dir(0) / index.current(0).index_file).with_name(first_file.rsplit("/", 1)[1]).exists()
    assert index.load(0).meta.items == 50  # this process's cache moves on to the current version
    assert first_file not in mapped_files(), "a deleted version stays mapped: its disk space never returns"
    assert first_vectors not in mapped_files(), "a deleted version's vectors stay mapped"

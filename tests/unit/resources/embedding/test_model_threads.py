"""embedding.threads: the model's CPU threads per process, shared out among the shard runs by default."""

from __future__ import annotations

import os

import numpy as np
import pytest

from grace.core.manifest import ManifestError, load_manifest
from grace.resources.embedding.embedder import Embedder
from grace.resources.wiring.services import embedder_settings

CORES = len(os.sched_getaffinity(0))


def settings(write_manifest, tail: str) -> dict:
    return embedder_settings(load_manifest(write_manifest(f"sources:\n  - {{name: docs, path: inbox}}\n{tail}")))


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ("index: {shards: 4}\n", CORES),  # shard_runs unset: one run takes every core
        ("index: {shards: 4}\nrouting: {shard_runs: 2}\n", max(1, CORES // 2)),
        ("index: {shards: 4}\nrouting: {shard_runs: 64, capacity: 64}\n", 1),
        # no more runs than shards can be at once, so one shard keeps every core
        ("index: {shards: 1}\nrouting: {shard_runs: 4}\n", CORES),
        ("index: {shards: 4}\nrouting: {shard_runs: 4}\nembedding: {threads: 3}\n", 3),
    ],
)
def test_threads_default_to_the_cores_shared_among_concurrent_shard_runs(write_manifest, tail, expected):
    assert settings(write_manifest, tail)["threads"] == expected


@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "many"])
def test_bad_threads_name_the_field(write_manifest, bad):
    with pytest.raises(ManifestError, match=r"embedding\.threads"):
        settings(write_manifest, f"embedding: {{threads: {bad}}}\n")


def test_the_onnx_session_runs_on_the_given_threads_with_the_same_vectors(onnx_model_cache):
    one = Embedder(backend="onnx-int8", cache_root=onnx_model_cache, threads=1)
    every = Embedder(backend="onnx-int8", cache_root=onnx_model_cache)
    texts = ["Lava poured from the volcano.", "She won the chess game in three moves."]
    np.testing.assert_allclose(one.encode(texts), every.encode(texts), atol=1e-5)
    assert one._loaded().session.get_session_options().intra_op_num_threads == 1
    assert every._loaded().session.get_session_options().intra_op_num_threads == os.cpu_count()

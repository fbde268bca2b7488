"""`grace search` and `grace stats` stay cheap: no Dagster, torch or Alembic on their path, and the
index files of a later process are not re-hashed while a stamp vouches for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grace.core.process_caches import reset_process_caches
from grace.resources.embedding.embedder import OFFLINE_ENVIRONMENT
from grace.resources.index.vector_index import IndexCorrupt, ShardedIndex
from tests.helpers.harness import Deployment

ROOT = Path(__file__).resolve().parents[4]

# The command as the shell runs it, then which heavy libraries the process ended up holding.
RUN_CLI = """
import contextlib, io, json, sys
from grace.cli.main import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    codes = [main(["search", "enormous sea mammals", "--json", "-c", sys.argv[1]]),
             main(["stats", "--json", "-c", sys.argv[1]])]
heavy = ["dagster", "torch", "sentence_transformers", "transformers", "alembic"]
print(json.dumps({"codes": codes, "out": out.getvalue(), "loaded": [name for name in heavy if name in sys.modules]}))
"""


@pytest.fixture(scope="module")
def onnx_deployment(tmp_path_factory, onnx_model_cache) -> Deployment:
    root = tmp_path_factory.mktemp("cost")
    deployment = Deployment(root, None, None, shards=2, embedding_backend="onnx-int8")
    deployment.drop("whales.txt", "Blue whales are the largest animals ever known to have lived.")
    deployment.drop("trains.md", "The night train to Vienna leaves from platform nine at 22:40.")
    deployment.sync()
    return deployment


@pytest.fixture(scope="module")
def cli_run(onnx_deployment) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RUN_CLI, str(onnx_deployment.root / "grace.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **OFFLINE_ENVIRONMENT},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_search_and_stats_answer_without_torch_or_alembic(cli_run):
    assert cli_run["codes"] == [0, 0]
    hits, end = json.JSONDecoder().raw_decode(cli_run["out"])
    assert hits[0]["path"] == "whales.txt"
    assert json.loads(cli_run["out"][end:])["total"]["index_coverage"] == 1.0
    assert not {"torch", "sentence_transformers", "transformers", "alembic"} & set(cli_run["loaded"])


def test_search_and_stats_answer_without_dagster(cli_run):
    """Dagster alone costs ~0.5 s of import; only bindings.py may import it."""
    assert "dagster" not in cli_run["loaded"]


def test_a_stamp_spares_the_hash_while_the_file_is_unchanged_and_verify_ignores_it(tmp_path):
    index = ShardedIndex(tmp_path, shards=1, trees=5)
    vectors = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    index.build(0, np.arange(40, dtype=np.int64), vectors / np.linalg.norm(vectors, axis=1, keepdims=True), "m@1")
    assert index.load(0).meta.items == 40
    meta = index.current(0)
    path = index.shard_dir(0) / meta.index_file
    stamp = path.with_name(path.name.split(".")[0] + ".verified")
    before = path.stat()
    assert json.loads(stamp.read_text()) == [before.st_size, before.st_mtime_ns, before.st_ino, meta.index_sha256]

    # Damage one vector's lowest byte in place (Annoy maps it without harm), keeping size, inode and mtime.
    with open(path, "r+b") as handle:
        handle.seek(12)  # item 0: three int32, then its first float, little-endian
        byte = handle.read(1)
        handle.seek(12)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.utime(stamp, ns=(before.st_mtime_ns + 10**9, before.st_mtime_ns + 10**9))
    reset_process_caches()  # as a new process
    assert index.load(0).meta.items == 40, "a stamp written after the file's mtime spares the hash"
    with pytest.raises(IndexCorrupt, match="checksum"):
        index.verify(0)

    # A stamp from the same timestamp tick as the file proves nothing: racily clean, so hashed.
    os.utime(stamp, ns=(before.st_mtime_ns, before.st_mtime_ns))
    reset_process_caches()
    with pytest.raises(IndexCorrupt, match="checksum"):
        index.load(0)


def test_a_changed_file_is_hashed_again_despite_its_stamp(tmp_path):
    index = ShardedIndex(tmp_path, shards=1, trees=5)
    vectors = np.random.default_rng(1).normal(size=(40, 8)).astype(np.float32)
    index.build(0, np.arange(40, dtype=np.int64), vectors / np.linalg.norm(vectors, axis=1, keepdims=True), "m@1")
    assert index.load(0).meta.items == 40
    path = index.shard_dir(0) / index.current(0).index_file
    data = bytearray(path.read_bytes())
    data[12] ^= 0x01
    path.write_bytes(bytes(data))
    changed = path.stat().st_mtime_ns + 10**9  # a later tick, surely
    os.utime(path, ns=(changed, changed))
    stamp = path.with_name(path.name.split(".")[0] + ".verified")
    os.utime(stamp, ns=(changed + 10**9, changed + 10**9))  # so only the changed mtime tells
    reset_process_caches()
    with pytest.raises(IndexCorrupt, match="checksum"):
        index.load(0)

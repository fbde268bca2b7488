"""The int8 ONNX copy of a sentence-transformers model: built once, cached, verified at every load.

The cache folder is `<cache root>/<model>-onnx-int8-<hash16>/`, where hash16 covers the source model's
files and BUILD_SETTINGS, so a new model release or a new recipe builds a new folder. The cache root is
`<state_dir>/models` unless the environment variable GRACE_MODEL_CACHE names another folder (the test
suite points every temporary state dir at one shared cache, so the model is built once per session).

Only `build_onnx_model` imports torch and transformers, and only when it runs; loading a cached
model needs neither.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from grace.resources.files.stamps import file_sha256, stamped_sha256

CACHE_VARIABLE = "GRACE_MODEL_CACHE"
BACKEND = "onnx-int8"
BUILD_FILE = "build.json"
STAMPS = ".stamps"  # in the cache root: checksums of the source model's files (see file_stamps)
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
POOLING_FILE = "pooling.json"
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT_NAME = "last_hidden_state"
# Files of a sentence-transformers folder that change the vectors; README and friends do not.
SOURCE_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentence_bert_config.json",
    "modules.json",
    "1_Pooling/config.json",
)
BUILD_SETTINGS = {
    "format": 2,
    "opset": 17,
    # Eager attention exports as plain MatMul/Softmax, which the optimizer fuses into one attention op.
    "attention": "eager",
    # MultiHeadAttention keeps the query/key/value projections as separate MatMuls, so they are quantized too.
    "optimizer": {"model_type": "bert", "opt_level": 1, "use_multi_head_attention": True},
    # Every activation scale covers one token's row, so a text's vector does not depend on its batch
    # (see grace.resources.embedding.onnx_quantize). GELU-fed MatMuls: MatMulNBits, 8-bit weight blocks of 64;
    # blocks of 128 and more take a slightly different kernel path for some row counts, which breaks
    # bit-exactness across batch sizes. Measured on bench/embed_quality.py's 320 chunks against torch,
    # format 1 (quantize_dynamic, per-tensor scales) -> format 2: mean cosine 0.9966 -> 0.9984, min
    # 0.9931 -> 0.9972, recall@10 0.92 -> 0.96, same text alone vs in a batch 0.964 -> 1.0000 (bit-equal
    # on this CPU), chunks/s over torch's 1.81x -> 1.71x (one process, interleaved pairs, medians).
    "quantization": {
        "activations": "per row",
        "gelu_fed": {"op": "MatMulNBits", "bits": 8, "block_size": 64, "accuracy_level": 4},
        "others": {"op": "MatMulInteger", "activations": "uint8 symmetric", "weights": "int8 per column"},
    },
}
ESTIMATED_BUILD_SECONDS = 15


def model_cache_root(state_dir: Path) -> Path:
    """Where built models live: $GRACE_MODEL_CACHE if set, else <state_dir>/models."""
    override = os.environ.get(CACHE_VARIABLE)
    return Path(override) if override else Path(state_dir) / "models"


def source_hash(source_dir: Path, stamps: Path) -> str:
    """sha256 over the source model's relevant files and BUILD_SETTINGS; the files' own hashes are
    stamped in the stamps folder, so a process pays for the 90 MB of weights only once."""
    digest = hashlib.sha256()
    for relative in sorted(SOURCE_FILES):
        path = source_dir / relative
        if path.is_file():
            stamp = stamps / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]}.json"
            digest.update(f"{relative}\0{stamped_sha256(path, stamp)}\n".encode())
    digest.update(json.dumps(BUILD_SETTINGS, sort_keys=True).encode())
    return digest.hexdigest()


def cache_dir_for(cache_root: Path, source_dir: Path, name: str) -> Path:
    return Path(cache_root) / f"{name}-{BACKEND}-{source_hash(source_dir, Path(cache_root) / STAMPS)[:16]}"


def problem_with(model_dir: Path) -> str | None:
    """Why model_dir is not a usable build, or None when it is."""
    if not model_dir.is_dir():
        return "no cached build"
    try:
        build = json.loads((model_dir / BUILD_FILE).read_text())
    except FileNotFoundError:
        return f"{BUILD_FILE} missing"
    except (OSError, ValueError) as error:
        return f"{BUILD_FILE} unreadable ({error})"
    for needed in (MODEL_FILE, TOKENIZER_FILE, POOLING_FILE):
        if not (model_dir / needed).is_file():
            return f"{needed} missing"
    model = model_dir / MODEL_FILE
    if model.stat().st_size != build.get("model_bytes"):
        return f"{MODEL_FILE} size mismatch"
    # Hashed once (about 40 ms for 59 MB), then trusted from its stamp while the file is unchanged.
    if stamped_sha256(model, model_dir / f"{MODEL_FILE}.verified") != build.get("model_sha256"):
        return f"{MODEL_FILE} checksum mismatch"
    return None


def _to_stderr(message: str) -> None:
    # stdout is a command's answer (`grace search --json`): a one-time build must not mix into it.
    print(message, file=sys.stderr, flush=True)


def ensure_onnx_model(
    cache_root: Path,
    source_dir: Path,
    name: str = "model",
    log: Callable[[str], None] = _to_stderr,
    force: bool = False,
) -> Path:
    """The verified cache folder of source_dir's int8 ONNX model, building it first if needed.

    Concurrent callers, in threads or processes, serialise on a lock file in cache_root; the
    ones that wait find the finished folder and return it.
    """
    cache_root, source_dir = Path(cache_root), Path(source_dir)
    target = cache_dir_for(cache_root, source_dir, name)
    if not force and problem_with(target) is None:
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    with _locked(cache_root / f".{target.name}.lock"):
        problem = "rebuild forced" if force else problem_with(target)
        if problem is None:
            return target
        if problem != "no cached build":
            log(f"{problem}: rebuilding ONNX model in {target} (one-time, ~{ESTIMATED_BUILD_SECONDS} s)")
        else:
            log(f"building ONNX model in {target} (one-time, ~{ESTIMATED_BUILD_SECONDS} s)")
        _build_into(target, source_dir)
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_into(target: Path, source_dir: Path) -> None:
    """Build in a temporary sibling, then swap it in with a rename, so readers never see half a build."""
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_onnx_model(source_dir, staging / MODEL_FILE)
        shutil.copyfile(source_dir / TOKENIZER_FILE, staging / TOKENIZER_FILE)
        (staging / POOLING_FILE).write_text(json.dumps(_pooling_settings(source_dir), indent=2, sort_keys=True))
        model = staging / MODEL_FILE
        build = {
            "settings": BUILD_SETTINGS,
            "source_dir": str(source_dir),
            "source_hash": source_hash(source_dir, target.parent / STAMPS),
            "model_bytes": model.stat().st_size,
            "model_sha256": file_sha256(model),
            "build_seconds": round(time.monotonic() - started, 2),
        }
        (staging / BUILD_FILE).write_text(json.dumps(build, indent=2, sort_keys=True))
        _fsync_tree(staging)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
        _fsync(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pooling_settings(source_dir: Path) -> dict:
    """What the encoder needs beyond the graph: truncation length and vector size."""
    bert = json.loads((source_dir / "sentence_bert_config.json").read_text())
    pooling = json.loads((source_dir / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"{source_dir}: only mean pooling is supported by the ONNX backend")
    return {"max_seq_length": int(bert["max_seq_length"]), "dimension": int(pooling["word_embedding_dimension"])}


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        _fsync(path)
    _fsync(folder)


def build_onnx_model(source_dir: Path, output: Path) -> None:
    """Export source_dir's transformer to ONNX, fuse it for onnxruntime and quantize it to int8 row by row."""
    import onnx
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    from grace.resources.embedding.onnx_quantize import quantize_rows

    settings = BUILD_SETTINGS
    config = json.loads((source_dir / "config.json").read_text())
    with tempfile.TemporaryDirectory(dir=output.parent) as scratch:
        exported = Path(scratch) / "exported.onnx"
        _export(source_dir, exported)
        fusion = FusionOptions(settings["optimizer"]["model_type"])
        fusion.use_multi_head_attention = settings["optimizer"]["use_multi_head_attention"]
        with _quiet_root_logger():
            optimized = optimizer.optimize_model(
                str(exported),
                model_type=settings["optimizer"]["model_type"],
                num_heads=int(config["num_attention_heads"]),
                hidden_size=int(config["hidden_size"]),
                optimization_options=fusion,
                opt_level=settings["optimizer"]["opt_level"],
                use_gpu=False,
            )
    model = optimized.model
    gelu_fed = settings["quantization"]["gelu_fed"]
    blocked = quantize_rows(model, gelu_fed["block_size"], gelu_fed["accuracy_level"])
    if len(blocked) != int(config["num_hidden_layers"]):
        raise RuntimeError(f"expected one GELU-fed MatMul per layer in the fused graph, found {len(blocked)}")
    onnx.save(model, str(output))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _export(source_dir: Path, output: Path) -> None:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    class HiddenStates(torch.nn.Module):
        """The transformer with positional inputs and only the token embeddings out."""

        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(key, "1")
    transformers_logging.disable_progress_bar()  # its 'Loading weights' bar ignores HF_HUB_DISABLE_PROGRESS_BARS
    model = AutoModel.from_pretrained(
        str(source_dir), local_files_only=True, attn_implementation=BUILD_SETTINGS["attention"]
    )
    model.eval()
    sample = torch.ones(2, 16, dtype=torch.long)
    # The tracer's warnings are about shapes that dynamic_axes handles; they only alarm a reader.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            HiddenStates(model),
            (sample, torch.ones_like(sample), torch.zeros_like(sample)),
            str(output),
            input_names=INPUT_NAMES,
            output_names=[OUTPUT_NAME],
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in [*INPUT_NAMES, OUTPUT_NAME]},
            opset_version=BUILD_SETTINGS["opset"],
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT fine
        )

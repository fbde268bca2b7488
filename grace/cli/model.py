"""The `grace model` subcommands: build (or verify) the int8 ONNX embedding model ahead of the first run."""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path

from grace.core.manifest import Manifest
from grace.resources.tasks.project_handlers import load_routed_manifest


def add_model_commands(commands: argparse._SubParsersAction, config_option: Callable) -> None:
    """Add `model build` to the grace command."""
    model = commands.add_parser("model", help="the embedding model's onnx-int8 build")
    model_commands = model.add_subparsers(required=True, metavar="MODEL_COMMAND")

    build = model_commands.add_parser(
        "build", help="build the onnx-int8 model into the model cache, or verify the one that is there"
    )
    build.add_argument("--force", action="store_true", help="rebuild even if a valid build is cached")
    config_option(build)
    build.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    manifest = load_routed_manifest(args.config)
    started = time.monotonic()
    folder = build_model(manifest, force=args.force)
    print(f"{manifest.embedding.model} onnx-int8: {folder} ({time.monotonic() - started:.1f} s)")
    if manifest.embedding.backend != "onnx-int8":
        print(f"note: grace.yaml sets embedding.backend: {manifest.embedding.backend}, so runs do not use this build")
    return 0


def ensure_model(manifest: Manifest) -> Path | None:
    """The onnx-int8 model built (or verified) if the manifest uses it, so the first runs do not all wait for it."""
    return build_model(manifest) if manifest.embedding.backend == "onnx-int8" else None


def build_model(manifest: Manifest, force: bool = False) -> Path:
    """Build (or verify) the manifest's onnx-int8 model in its model cache, saying so when it builds."""
    from grace.resources.embedding.embedder import MODELS
    from grace.resources.embedding.onnx_model import ensure_onnx_model, model_cache_root

    embedding = manifest.embedding
    source = MODELS[embedding.model][0]()
    log = functools.partial(print, "grace:", flush=True)
    return ensure_onnx_model(model_cache_root(manifest.state_dir), source, embedding.model, log=log, force=force)

"""What each asset shows in the Dagster UI beside its description: grace.yaml's owners, and kinds."""

from __future__ import annotations

from grace.core.manifest import Manifest


def store_kind(manifest: Manifest) -> str:
    """The kind of the store an asset lives in."""
    return "postgres" if manifest.store_url.startswith("postgresql") else "sqlite"


def model_kind(manifest: Manifest) -> str:
    """The runtime that embeds: onnx for the int8 copy, pytorch for the original."""
    return "onnx" if manifest.embedding.backend == "onnx-int8" else "pytorch"

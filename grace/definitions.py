"""The Dagster code location: everything comes from grace.yaml (GRACE_CONFIG or ./grace.yaml)."""

from grace.manifest import load_manifest
from pipelines import build_definitions

defs = build_definitions(load_manifest())

"""Render the Dagster instance (DAGSTER_HOME/dagster.yaml and workspace.yaml) from grace.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from grace.core.manifest import Manifest
from grace.core.names import SHARD_TAG

HEADER = "# Rendered by `grace dev` from grace.yaml. Edits here are overwritten: change grace.yaml.\n"


def instance_config(manifest: Manifest) -> dict:
    """Telemetry off; the run queue is the capacity, and each shard runs one run at a time."""
    return {
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
        # The default run launcher cannot see a run worker that was killed, so a bound on
        # run time is what frees its shard; a retry then finishes the work.
        "run_monitoring": {
            "enabled": True,
            "max_runtime_seconds": manifest.daemon.max_run_seconds,
            "poll_interval_seconds": 30,
        },
        "run_retries": {"enabled": True, "max_retries": 2},
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {
                "max_concurrent_runs": manifest.daemon.max_concurrent_runs,
                "tag_concurrency_limits": [
                    {"key": SHARD_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
                ],
                # The default 5 s between dequeues is most of a small file's time to searchable.
                "dequeue_interval_seconds": 1,
            },
        },
    }


def render_instance(manifest: Manifest, dagster_home: Path, manifest_dir: Path) -> Path:
    """Write dagster.yaml and workspace.yaml (the code location "grace") into the Dagster home."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(HEADER + yaml.safe_dump(instance_config(manifest), sort_keys=False))
    workspace = {
        "load_from": [
            {
                "python_module": {
                    "module_name": "grace.definitions",
                    "location_name": "grace",
                    "working_directory": str(manifest_dir),
                }
            }
        ]
    }
    target = dagster_home / "workspace.yaml"
    target.write_text(HEADER + yaml.safe_dump(workspace, sort_keys=False))
    return target

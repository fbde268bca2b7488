"""Render the Dagster instance (DAGSTER_HOME/dagster.yaml and workspace.yaml) from grace.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from grace.core.database_config import PASSWORD_ENV, PSYCOPG2_SCHEME
from grace.core.manifest import Manifest
from grace.core.names import CODE_LOCATION
from grace.core.routing_config import RoutingConfig, instance_drift, run_queue_limits

HEADER = "# Rendered by `grace dev` from grace.yaml. Edits here are overwritten: change grace.yaml.\n"


# Run monitoring's poll, and how long a CANCELING run may wait for its worker: a run whose
# worker is gone never acknowledges the cancel, so it ends as CANCELED after this long
# (run_health usually ends it first, from the stale heartbeat).
MONITOR_POLL_SECONDS = 10
CANCEL_TIMEOUT_SECONDS = 45


def instance_config(manifest: Manifest) -> dict:
    """Telemetry off; the run queue enforces routing's capacity and quotas, and one run per shard.

    With database: on PostgreSQL, runs, event logs and schedules live there too (else SQLite in the home).
    """
    return {
        **postgres_storage(manifest),
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
        # The code server fails a run whose worker it saw die; a hung worker, or one whose code
        # server is gone, only stops beating: run_health fails it within a minute, and max
        # runtime is the last resort.
        "run_monitoring": {
            "enabled": True,
            "max_runtime_seconds": manifest.daemon.max_run_seconds,
            "cancel_timeout_seconds": CANCEL_TIMEOUT_SECONDS,
            "poll_interval_seconds": MONITOR_POLL_SECONDS,
        },
        "run_retries": {"enabled": True, "max_retries": 2},
        # Run workers fork from a warm process: a small run starts in well under a second, not 2-3 s.
        "run_launcher": {"module": "grace.deploy.launcher", "class": "ForkingRunLauncher"},
        # Folder, freshness and run_health sensors tick side by side: evaluated one after
        # another, the others' ticks would delay a folder sensor's next look at its events.
        "sensors": {"use_threads": True, "num_workers": 4},
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {
                # Capacity, per-origin quotas and one run per shard: see grace.core.routing_config.
                **run_queue_limits(manifest.routing),
                # The default 5 s between dequeues is most of a small file's time to searchable.
                "dequeue_interval_seconds": 1,
            },
        },
    }


def postgres_storage(manifest: Manifest) -> dict:
    """dagster-postgres storage on database.url, or {} (SQLite storage in the home) when that is not PostgreSQL.

    No password here: libpq takes it from PGPASSWORD, which load_manifest sets from database.password.
    """
    if manifest.database is None or not manifest.database.is_postgres:
        return {}
    from sqlalchemy import make_url

    url = make_url(manifest.store_url)
    database = {
        "username": url.username or "",
        "hostname": url.host or "",
        "db_name": url.database or "",
        "port": url.port or 5432,
        # psycopg2, as the store uses: a bare postgresql:// would ask SQLAlchemy 2.1 for psycopg 3.
        "scheme": PSYCOPG2_SCHEME,
    }
    if url.query:
        database["params"] = dict(url.query)
    return {"storage": {"postgres": {"postgres_db": database}}}


def render_instance(manifest: Manifest, dagster_home: Path, manifest_dir: Path) -> Path:
    """Write dagster.yaml and workspace.yaml (the code location "grace") into the Dagster home."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = instance_config(manifest)
    header = HEADER
    if manifest.database is not None and manifest.database.password is not None and "storage" in config:
        header += (
            f"# The PostgreSQL password comes from {manifest.database.password} via {PASSWORD_ENV}, never this file.\n"
        )
    (dagster_home / "dagster.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))
    workspace = {
        "load_from": [
            {
                "python_module": {
                    "module_name": "grace.definitions",
                    "location_name": CODE_LOCATION,
                    "working_directory": str(manifest_dir),
                }
            }
        ]
    }
    target = dagster_home / "workspace.yaml"
    target.write_text(HEADER + yaml.safe_dump(workspace, sort_keys=False))
    return target


def rendered_drift(dagster_home: Path, routing: RoutingConfig) -> list[str]:
    """How the instance in dagster_home, loaded as Dagster loads it, differs from grace.yaml's routing ([] if not)."""
    from dagster import DagsterInstance

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        return instance_drift(instance, routing)
    finally:
        instance.dispose()

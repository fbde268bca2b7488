"""Sensors: one per watched folder, index freshness, overdue keys, run health, and task routing and status."""

from __future__ import annotations

from collections.abc import Sequence

from dagster import JobDefinition, SensorDefinition

from grace.core.manifest import Manifest
from grace.sensors.folder import build_folder_sensor
from grace.sensors.index_freshness import build_freshness_sensor
from grace.sensors.keys_overdue import build_keys_overdue_sensor
from grace.sensors.router import build_router_sensor
from grace.sensors.run_health import build_run_health_sensor
from grace.sensors.task_lifecycle import build_task_status_sensor


def build_sensors(manifest: Manifest, task_jobs: Sequence[JobDefinition]) -> list[SensorDefinition]:
    """task_jobs: the task jobs of grace.pipelines, which route_tasks targets (sensors never import pipelines)."""
    folder_sensors = [build_folder_sensor(manifest, source) for source in manifest.sources]
    return [
        *folder_sensors,
        build_freshness_sensor(manifest),
        build_keys_overdue_sensor(manifest),
        build_run_health_sensor(),
        build_router_sensor(manifest, task_jobs),
        build_task_status_sensor(manifest),
    ]

"""Sensors: one per watched folder, plus index freshness and run health."""

from __future__ import annotations

from dagster import SensorDefinition

from grace.core.manifest import Manifest
from grace.sensors.folder import build_folder_sensor
from grace.sensors.index_freshness import build_freshness_sensor
from grace.sensors.run_health import build_run_health_sensor


def build_sensors(manifest: Manifest) -> list[SensorDefinition]:
    folder_sensors = [build_folder_sensor(manifest, source) for source in manifest.sources]
    return [*folder_sensors, build_freshness_sensor(manifest), build_run_health_sensor()]

"""The Dagster code location. Everything comes from grace.yaml ($GRACE_CONFIG or ./grace.yaml):
pipelines/ gives assets, jobs and schedules, sensors/ the sensors, resources/ the services."""

from dagster import Definitions, definitions

from grace.core.manifest import Manifest, load_manifest
from grace.pipelines import build_pipelines
from grace.resources import build_resources
from grace.sensors import build_sensors


def build_definitions(manifest: Manifest) -> Definitions:
    return Definitions.merge(
        build_pipelines(manifest),
        Definitions(sensors=build_sensors(manifest), resources=build_resources(manifest)),
    )


@definitions
def defs() -> Definitions:
    return build_definitions(load_manifest())

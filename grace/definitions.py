"""The Dagster code location. Everything comes from grace.yaml ($GRACE_CONFIG or ./grace.yaml):
pipelines/ gives assets, jobs and schedules, sensors/ the sensors, resources/ the services."""

from dagster import Definitions, definitions

from grace.core.manifest import Manifest
from grace.core.names import TASK_JOB_PREFIX
from grace.deploy.alembic_leak import stop_alembic_resource_leak
from grace.pipelines import build_pipelines
from grace.resources.tasks.project_handlers import load_routed_manifest
from grace.resources.wiring.dagster_resources import build_resources
from grace.sensors import build_sensors

stop_alembic_resource_leak()  # the code server builds an instance per tick; see alembic_leak.py


def build_definitions(manifest: Manifest) -> Definitions:
    pipelines = build_pipelines(manifest)
    # The routing sensor targets the task jobs; sensors may not import pipelines, so they are passed here.
    task_jobs = [job for job in pipelines.jobs if job.name.startswith(TASK_JOB_PREFIX)]
    return Definitions.merge(
        pipelines,
        Definitions(sensors=build_sensors(manifest, task_jobs), resources=build_resources(manifest)),
    )


@definitions
def defs() -> Definitions:
    return build_definitions(load_routed_manifest())

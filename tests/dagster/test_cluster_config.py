"""docs/cluster/: the cluster's instance, grace.yaml and worker config load with Dagster's own classes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_celery.cli import get_validated_config
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from sqlalchemy import make_url

from grace.core.manifest import ManifestError, load_manifest, parse_manifest
from grace.core.names import CODE_LOCATION
from grace.core.routing_config import instance_drift
from grace.definitions import build_definitions
from grace.deploy.launcher import ForkingRunLauncher

CLUSTER = Path(__file__).resolve().parents[2] / "docs" / "cluster"
BROKER = "pyamqp://grace:s3cret@rabbitmq.internal:5672//"


@pytest.fixture
def cluster_environment(monkeypatch, postgres_url):
    """The variables docs/cluster.md has every machine set, pointing at a fresh database."""
    url = make_url(postgres_url)
    for name, value in {
        "GRACE_PG_HOST": url.host,
        "GRACE_PG_PORT": str(url.port or 5432),
        "GRACE_PG_DB": url.database,
        "GRACE_PG_USER": url.username,
        "GRACE_PG_PASSWORD": url.password or "unused-with-trust-auth",
        "GRACE_CELERY_BROKER": BROKER,
        "GRACE_KEK": "unused: nothing here reads the key",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GRACE_DATABASE_URL", raising=False)


def test_the_cluster_instance_loads_with_dagsters_classes_and_enforces_grace_yamls_routing(
    cluster_environment, tmp_path
):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(CLUSTER / "dagster.yaml", home / "dagster.yaml")
    manifest = load_manifest(CLUSTER / "grace.yaml")
    instance = DagsterInstance.from_config(str(home))
    try:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert isinstance(instance.run_launcher, ForkingRunLauncher)
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert instance_drift(instance, manifest.routing) == []
        assert instance.get_runs() == []  # the schema is there: the database answered
    finally:
        instance.dispose()


def test_the_cluster_grace_yaml_sends_every_job_to_the_celery_workers(cluster_environment):
    manifest = load_manifest(CLUSTER / "grace.yaml")
    assert manifest.database.is_postgres and manifest.executor.kind == "celery"
    defs = build_definitions(manifest)
    for job in defs.resolve_all_job_defs():
        assert job.executor_def.name == "grace_celery", job.name
    assert defs.resolve_job_def("ingest").executor_def.config_schema  # configured: no run config needed
    # The workers' config: the same broker and queue the jobs send to.
    worker = get_validated_config(str(CLUSTER / "celery.yaml"))
    assert worker["broker"] == BROKER
    assert worker["config_source"]["task_default_queue"] == manifest.executor.queue
    # The control machine's code location is the one the workers load: grace.definitions, named grace.
    [location] = yaml.safe_load((CLUSTER / "workspace.yaml").read_text())["load_from"]
    assert location["python_module"]["module_name"] == "grace.definitions"
    assert location["python_module"]["location_name"] == CODE_LOCATION


@pytest.mark.parametrize(
    "section, message",
    [
        ("executor:\n  kind: celery\n  broker: pyamqp://u:pw@mq//\n", "must not hold a password"),
        ("executor:\n  kind: celery\n  broker: http://mq\n", "'http' is not a broker"),
        ("executor:\n  kind: celery\n  queue: 'a b'\n", "executor.queue"),
        ("executor:\n  queue: grace\n", "apply to kind: celery only"),
        ("executor:\n  kind: dask\n", "executor.kind"),
    ],
)
def test_executor_mistakes_name_the_field(section, message, tmp_path):
    with pytest.raises(ManifestError, match=message) as error:
        parse_manifest(section, "grace.yaml", tmp_path)
    assert "pw" not in str(error.value)

"""One lifetime of a Grace daemon on the product path, in its own process, until nothing is left to do.

    python tests/helpers/crash_run.py ROOT STORE_URL fake|real

The crash tests set GRACE_FAILPOINT so that this process dies as kill -9 would, then start it
again without, as a restarted daemon picks the work up, and compare with a clean run.
What the process keeps, and where, mirrors the daemon:

- the Dagster instance is persistent: ROOT/dagster_home, with the dagster.yaml `grace dev` renders;
- each sensor's cursor lives in that instance (its key-value store, which Dagster's own daemons
  use for their cursors), committed only after the tick's runs were launched;
- a request whose run key already names a launched run of the sensor is skipped, as the daemon does
  (the crash tests count the runs the instance received, so a request for the same work under
  another key, or this rule broken, shows up there);
- a run left STARTED by a killed process still has the heartbeat row it last wrote: the product's
  run_health sensor fails it once that heartbeat is older than DEAD_AFTER_SECONDS (the sensor's
  own timeout, set short: no run of this lifetime beats while sensors tick) and requests its shard
  again; until then the process keeps ticking;
- each round ticks every sensor of the code location, folder sensors first; rounds are one
  `watch.reconcile_every_seconds` apart (the cursor's last reconcile is aged instead of slept
  out), so each folder tick also re-requests shards with unfinished work. The process ends
  after the first round that launches nothing and leaves no run in flight.

Runs execute in this process (the ingest and rebuild jobs, with the sensor's tags), standing
in for the run queue and launcher. The driver's own failpoint, daemon.before_cursor_commit,
kills it after a tick's runs and before their cursor is committed.
"""

import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dagster import (  # noqa: E402
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunRequest,
    RunsFilter,
    SensorResult,
    build_sensor_context,
)
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG  # noqa: E402

from grace.core.failpoints import failpoint  # noqa: E402
from grace.deploy.instance import render_instance  # noqa: E402
from grace.resources.wiring.dagster_resources import EmbedderResource  # noqa: E402
from grace.sensors.run_health import build_run_health_sensor  # noqa: E402
from grace.sensors.run_records import IN_FLIGHT  # noqa: E402
from tests.helpers.fakes import HashingEmbedderResource  # noqa: E402
from tests.helpers.harness import Deployment  # noqa: E402

SHARDS = 2
MAX_ROUNDS = 8
CURSOR_KEY = "grace-crash-test/sensor-cursor/{}"
DIDNT_CONVERGE = 3
DEAD_AFTER_SECONDS = 1.0  # run_health's heartbeat timeout here; the product's is HEARTBEAT_TTL_SECONDS


def open_deployment(root: Path, store_url: str, kind: str) -> Deployment:
    embedder = EmbedderResource(batch_size=2) if kind == "real" else HashingEmbedderResource()
    return Deployment(root, store_url, embedder, shards=SHARDS, max_bytes="1MB")


def open_instance(deployment: Deployment) -> DagsterInstance:
    """The instance `grace dev` renders, with one event-log database instead of one per run:
    the same semantics, without a new SQLite file per run (seconds per test on 2 cores)."""
    home = deployment.root / "dagster_home"
    render_instance(deployment.manifest, home, deployment.root)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["event_log_storage"] = {
        "module": "dagster._core.storage.event_log",
        "class": "ConsolidatedSqliteEventLogStorage",
        "config": {"base_dir": str(home / "history")},
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return DagsterInstance.from_config(str(home))


def age_last_reconcile(instance: DagsterInstance, sensor_name: str, seconds: int) -> None:
    """A reconcile interval passes: the folder sensor's next tick scans and re-requests unfinished work."""
    stored = load_cursor(instance, sensor_name)
    if stored:
        cursor = json.loads(stored)
        cursor["reconciled_at"] = time.time() - seconds
        save_cursor(instance, sensor_name, json.dumps(cursor))


def load_cursor(instance: DagsterInstance, sensor_name: str) -> str | None:
    key = CURSOR_KEY.format(sensor_name)
    return instance.run_storage.get_cursor_values({key}).get(key)


def save_cursor(instance: DagsterInstance, sensor_name: str, cursor: str | None) -> None:
    if cursor is not None:
        instance.run_storage.set_cursor_values({CURSOR_KEY.format(sensor_name): cursor})


def already_launched(instance: DagsterInstance, sensor_name: str, run_key: str) -> bool:
    """The daemon's rule: a run with this key from this sensor exists and was launched."""
    runs = instance.get_runs(filters=RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor_name}))
    return any(run.status != DagsterRunStatus.NOT_STARTED for run in runs)


def tick(definitions: Definitions, instance: DagsterInstance, sensor_name: str) -> int:
    """One sensor evaluation, its runs, then its cursor; returns how many runs it launched."""
    sensor = definitions.resolve_sensor_def(sensor_name)
    with build_sensor_context(
        instance=instance, cursor=load_cursor(instance, sensor_name), resources=definitions.resources
    ) as context:
        result = sensor(context)
    requests: list[RunRequest] = []
    cursor = None
    if isinstance(result, SensorResult):
        requests, cursor = list(result.run_requests or []), result.cursor
    elif isinstance(result, list):
        requests = result
    launched = 0
    for request in requests:
        if request.run_key and already_launched(instance, sensor_name, request.run_key):
            continue
        tags = {**request.tags, SENSOR_NAME_TAG: sensor_name}
        if request.run_key:
            tags[RUN_KEY_TAG] = request.run_key
        job_name = request.job_name or sensor.job_name
        outcome = definitions.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=request.partition_key, tags=tags
        )
        assert outcome.success, f"{job_name} run for shard {request.partition_key} failed"
        launched += 1
    if launched:
        failpoint("daemon.before_cursor_commit")
    save_cursor(instance, sensor_name, cursor)
    return launched


def main(root: Path, store_url: str, kind: str) -> int:
    deployment = open_deployment(root, store_url, kind)
    defs = deployment.defs
    run_health = build_run_health_sensor(heartbeat_ttl_seconds=DEAD_AFTER_SECONDS)
    definitions = Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        sensors=[*(sensor for sensor in defs.sensors if sensor.name != run_health.name), run_health],
        schedules=defs.schedules,
        resources=deployment.resources,
    )
    instance = open_instance(deployment)
    folder_sensors = [f"watch_{source.name}" for source in deployment.manifest.sources]
    other_sensors = [sensor.name for sensor in definitions.sensors if sensor.name not in folder_sensors]
    interval = deployment.manifest.watch.reconcile_every_seconds
    for _round in range(MAX_ROUNDS):
        launched = 0
        for name in folder_sensors:
            age_last_reconcile(instance, name, interval)
            launched += tick(definitions, instance, name)
        for name in other_sensors:  # index_freshness, run_health: every sensor the daemon would tick
            launched += tick(definitions, instance, name)
        if not launched:
            if not instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT), limit=1):
                return 0
            time.sleep(DEAD_AFTER_SECONDS)  # a killed run's heartbeat is not stale yet: run_health ends it later
    print(f"still launching runs, or a run left in flight, after {MAX_ROUNDS} rounds", file=sys.stderr)
    return DIDNT_CONVERGE


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))

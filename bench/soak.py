"""Load and soak: `grace dev` with the HTTP API under a steady churn of file creates, edits, deletes and
routed tasks for --minutes; memory of every long-lived process, freshness, queue waits and errors.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 0.5] [--task-rate 0.2] [--shards 4] [--keep] [--json]

A fresh temporary deployment (SQLite, one documents source, --shards shards, onnx-int8, the project's
echo handler routed) runs under `grace dev` with the API on. For --minutes it creates, edits and
deletes small one-chunk files in the watched folder at --rate operations a second (8 to 40 files
live) and submits one echo task through POST /api/tasks every 1/--task-rate seconds. The first 20% of
the time, at least 30 s, is warm-up: the same churn, but no latency counts and no RSS is sampled yet.

- drop_to_searchable: seconds from writing a create or edit until a search through the API for the
  file's whole text (one chunk) returns that file with the write's unique marker (each write in flight is
  searched every 0.5 s, backing off to 5% of its age, at most 1 s; the API's CPU in the table is mostly
  these searches). delete_to_gone: until no hit is that file.
- task_wait: each task record's queue_wait_ms, from received to its run started.
- rss: VmRSS (/proc) of every process in grace dev's process group, every --rss-every s from the end
  of the warm-up to the end of the churn. Only processes in the first and the last sample (pid and
  start time) count, so the run workers forked per run drop out. Per process, start is the median of
  the first 3 samples and end of the last 3 (one sample can catch a spike), peak the largest; MB.
  rss_growth_pct is the largest (end - start) / start * 100 over those processes.
- coverage_end: index_coverage (grace.api.stats) after the churn, once the deployment drained (no
  write in flight, no run queued or running, every task ended, coverage 1.0) or --drain-timeout passed.
- deployment_cpu_pct: CPU time of those processes (with their reaped children's, so the run workers')
  over the measured time, in % of one core; load_avg_1m: the machine's mean load average meanwhile,
  since the latencies depend on what else runs.
- errors: Dagster runs failed or canceled, failed sensor or schedule ticks, tasks failed or never
  ended, writes not searchable (deletes still found) after --write-timeout, failed HTTP requests.

Goals (issue 12): rss_growth_pct <= 10, coverage_end 1.0, errors 0. Prints a table and the errors,
and with --json one object on the last line: minutes, warmup_s, rss_growth_pct, rss {name: {pid, start,
peak, end, growth_pct, cpu_s, samples}}, coverage_end, drain_s, drop_to_searchable_p50_s and _p95_s,
delete_to_gone_p50_s and _p95_s, task_wait_p50_ms and _p95_ms, tasks_measured, errors (a count),
error_list, slow_writes (writes that took over 30 s, with their wall-clock time, to trace in the logs),
counts, vanished_processes (as old as the warm-up at the first RSS sample, gone by the last),
operations_per_s and tasks_per_s (achieved), deployment_cpu_pct, load_avg_1m, settings.
Set GRACE_MODEL_CACHE to a folder kept between runs, or the onnx-int8 model is built first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter  # noqa: E402
from dagster._core.scheduler.instigation import TickStatus  # noqa: E402

from bench.corpus import documents  # noqa: E402
from bench.freshness import percentile  # noqa: E402
from bench.soak_churn import Api, FileChurn, TaskChurn  # noqa: E402
from bench.soak_rss import RssSampler  # noqa: E402
from grace.api import stats  # noqa: E402
from grace.core.names import REASON_TAG, REBUILD_REASON_TAG  # noqa: E402
from tests.helpers.devserver import DevServer, free_port  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
WARMUP_SHARE, MIN_WARMUP_SECONDS, MIN_MEASURED_SECONDS = 0.2, 30.0, 30.0
IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
MANIFEST = """state_dir: state
sources:
  - {{name: documents, path: inbox/documents}}
index: {{shards: {shards}, trees: 10}}
routing:
  routes: {{echo: echo}}
  inbox: inbox/tasks
"""


def deployment(root: Path, shards: int) -> Path:
    """grace.yaml of a fresh deployment in root, with the project's handlers; its path."""
    shutil.copytree(REPOSITORY / "handlers", root / "handlers")
    (root / "inbox" / "documents").mkdir(parents=True)
    manifest = root / "grace.yaml"
    manifest.write_text(MANIFEST.format(shards=shards))
    return manifest


def churn(args: argparse.Namespace, files: FileChurn, tasks: TaskChurn, sampler: RssSampler, warmup: float) -> float:
    """Operations and task submissions at their fixed rates until --minutes have passed, RSS sampled after the
    warm-up; the seconds it took."""
    started = time.monotonic()
    warm_until, end = started + warmup, started + args.minutes * 60
    next_operation, next_task = started, started + 0.5 / args.task_rate
    sampling = False
    while (now := time.monotonic()) < end:
        if not sampling and now >= warm_until:
            sampler.start()
            sampling = True
        if now >= next_operation:
            files.operate(measured=now >= warm_until)
            next_operation = max(next_operation + 1 / args.rate, now)  # late never bursts: the pace stays fixed
        if now >= next_task:
            tasks.submit(measured=now >= warm_until)
            next_task = max(next_task + 1 / args.task_rate, now)
        files.poll_one()
        time.sleep(max(0.0, min(next_operation, next_task, files.next_poll(), end) - time.monotonic()))
    sampler.stop()
    return time.monotonic() - started


def drain(files: FileChurn, tasks: TaskChurn, api: Api, instance: DagsterInstance, timeout: float) -> float | None:
    """Seconds until no write is in flight, no run is queued or running, every task ended and coverage is 1.0."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        files.poll_one()
        if not files.pending and not instance.get_runs_count(RunsFilter(statuses=IN_FLIGHT)):
            found = api.call("GET", "/api/vectors/index/stats")
            if found is not None and found["index_coverage"] == 1.0 and not tasks.open_count():
                return time.monotonic() - started
        time.sleep(max(0.0, min(files.next_poll(), time.monotonic() + 1.0) - time.monotonic()))
    return None


def dagster_errors(instance: DagsterInstance, errors: list[str]) -> Counter[str]:
    """Record every failed or canceled run and failed tick; the runs by job and what launched them."""
    failed = RunsFilter(statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED])
    for record in instance.get_run_records(failed):
        run = record.dagster_run
        failures = instance.all_logs(run.run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE})
        why = failures[0].message.splitlines()[0][:300] if failures else "no failure event"
        errors.append(f"run {run.run_id[:8]} of {run.job_name} {run.status.value} (tags {run.tags}): {why}")
    for state in instance.all_instigator_state():
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id, statuses=[TickStatus.FAILURE]):
            message = tick.error.message.splitlines()[0][:300] if tick.error else "no error recorded"
            errors.append(f"{state.instigator_name} tick failed: {message}")
    return Counter(
        launched_by(record.dagster_run.job_name, record.dagster_run.tags) for record in instance.get_run_records()
    )


def launched_by(job: str, tags: dict[str, str]) -> str:
    """job/how: ingest/push (the folder's pusher), ingest/sensor (its safety-net tick), rebuild_index/<reason>…"""
    how = tags.get(REASON_TAG) or tags.get(REBUILD_REASON_TAG) or ("sensor" if "dagster/sensor_name" in tags else "")
    return f"{job}/{how}" if how else job


def task_figures(tasks: TaskChurn, errors: list[str]) -> dict:
    waits = []
    for record, measured in tasks.records():
        if record["status"] == "failed":
            errors.append(f"task {record['task_id']} failed: {str(record['error'])[:300]}")
        elif record["status"] != "succeeded":
            errors.append(f"task {record['task_id']} never ended: still {record['status']}")
        elif measured and record["queue_wait_ms"] is not None:
            waits.append(record["queue_wait_ms"])
    return {
        "task_wait_p50_ms": round(statistics.median(waits)) if waits else None,
        "task_wait_p95_ms": round(percentile(waits, 0.95)) if waits else None,
        "tasks_measured": len(waits),
    }


def seconds(values: list[float], share: float) -> float | None:
    return round(percentile(values, share), 2) if values else None


def soak(args: argparse.Namespace, manifest: Path, home: Path, server: DevServer, url: str, warmup: float) -> dict:
    """Churn, drain and measure a running deployment; the figures."""
    errors: list[str] = []
    api = Api(url, errors)
    operations = int(args.minutes * 60 * args.rate) + 10  # each takes at most one new text
    texts = iter(documents(operations, 40, seed=args.seed).values())
    files = FileChurn(manifest.parent / "inbox" / "documents", api, errors, texts, args.seed, args.write_timeout)
    tasks = TaskChurn(api)
    sampler = RssSampler(server.process.pid, args.rss_every)
    churned = churn(args, files, tasks, sampler, warmup)
    with DagsterInstance.from_config(str(home)) as instance:
        drained = drain(files, tasks, api, instance, args.drain_timeout)
        runs = dagster_errors(instance, errors)
    task_wait = task_figures(tasks, errors)
    rss = sampler.report()
    return {
        "minutes": args.minutes,
        "warmup_s": round(warmup, 1),
        "rss_growth_pct": max(process["growth_pct"] for process in rss.values()),
        "coverage_end": stats(manifest)["total"]["index_coverage"],
        "drain_s": None if drained is None else round(drained, 1),
        "drop_to_searchable_p50_s": seconds(files.searchable, 0.5),
        "drop_to_searchable_p95_s": seconds(files.searchable, 0.95),
        "delete_to_gone_p50_s": seconds(files.gone, 0.5),
        "delete_to_gone_p95_s": seconds(files.gone, 0.95),
        **task_wait,
        "errors": len(errors),
        "error_list": errors[:50],
        "slow_writes": files.slow[:50],
        "rss": rss,
        "counts": {
            **files.counts,
            "measured_writes": len(files.searchable),
            "measured_deletes": len(files.gone),
            "tasks": len(tasks.submitted),
            "http_requests": api.requests,
            "runs": dict(runs),
            "short_lived_processes": sampler.short_lived(),
        },
        "vanished_processes": sampler.vanished(older_than=warmup),
        "operations_per_s": round(sum(files.counts[kind] for kind in ("create", "edit", "delete")) / churned, 3),
        "tasks_per_s": round(len(tasks.submitted) / churned, 3),
        "deployment_cpu_pct": sampler.cpu_percent(),
        "load_avg_1m": sampler.mean_load(),
        "settings": {"rate": args.rate, "task_rate": args.task_rate, "shards": args.shards, "seed": args.seed},
    }


def print_report(figures: dict) -> None:
    print(f"{'process':<28} {'pid':>7} {'start MB':>9} {'peak MB':>9} {'end MB':>9} {'growth %':>9} {'CPU s':>7}")
    for name, process in figures["rss"].items():
        print(
            f"{name:<28} {process['pid']:>7} {process['start']:>9} {process['peak']:>9} {process['end']:>9} "
            f"{process['growth_pct']:>9} {process['cpu_s']:>7}"
        )
    print(
        f"the deployment used {figures['deployment_cpu_pct']}% of one core (run workers in their forkserver's CPU); "
        f"machine load average {figures['load_avg_1m']} on {os.cpu_count()} CPUs while measured"
    )
    print(
        f"{figures['minutes']} min (warm-up {figures['warmup_s']} s): rss_growth_pct {figures['rss_growth_pct']} "
        f"(goal <= 10); coverage_end {figures['coverage_end']} (goal 1.0) after a drain of {figures['drain_s']} s; "
        f"errors {figures['errors']} (goal 0)"
    )
    print(
        f"drop to searchable p50 {figures['drop_to_searchable_p50_s']} s, p95 {figures['drop_to_searchable_p95_s']} s; "
        f"delete to gone p50 {figures['delete_to_gone_p50_s']} s, p95 {figures['delete_to_gone_p95_s']} s; "
        f"task wait p50 {figures['task_wait_p50_ms']} ms, p95 {figures['task_wait_p95_ms']} ms"
    )
    print(
        f"achieved {figures['operations_per_s']} file operations/s and {figures['tasks_per_s']} tasks/s; "
        f"processes gone before the end: {figures['vanished_processes'] or 'none'}"
    )
    print(f"counts: {json.dumps(figures['counts'])}")
    for slow in figures["slow_writes"]:
        print(f"slow: {slow}")
    for error in figures["error_list"]:
        print(f"error: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="churn time, warm-up included")
    parser.add_argument("--rate", type=float, default=0.5, help="file creates, edits and deletes per second")
    parser.add_argument("--task-rate", type=float, default=0.2, help="echo tasks submitted per second")
    parser.add_argument("--shards", type=int, default=4, choices=range(1, 17), metavar="1..16")
    parser.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--write-timeout", type=float, default=120.0, help="seconds a write may take to show")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for quiet at the end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the deployment folder (kept anyway on errors)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    args = parser.parse_args()
    warmup = max(MIN_WARMUP_SECONDS, WARMUP_SHARE * args.minutes * 60)
    if args.minutes * 60 < warmup + MIN_MEASURED_SECONDS or args.rate <= 0 or args.task_rate <= 0:
        parser.error(f"--minutes must leave {MIN_MEASURED_SECONDS:.0f} s after the warm-up; rates must be positive")
    root = Path(tempfile.mkdtemp(prefix="grace-soak-"))
    manifest = deployment(root, args.shards)
    home, log, api_port = root / "dagster_home", root / "dagster-dev.log", free_port()
    server = DevServer(manifest, home, free_port(), log, api_port=api_port)
    figures = None
    try:
        server.start(ready_timeout=300)
        figures = soak(args, manifest, home, server, f"http://127.0.0.1:{api_port}", warmup)
    except BaseException:
        print(log.read_text(errors="replace")[-5000:], file=sys.stderr)
        raise
    finally:
        server.stop()
        # A failed soak or one with errors keeps its deployment (logs, store, Dagster home) to look into.
        if args.keep or figures is None or figures["errors"]:
            print(f"deployment kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_report(figures)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

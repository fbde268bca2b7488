"""Tasks through a real `grace dev`: submit-to-queued latency, throughput, and the concurrency the queue allowed.

    .venv/bin/python bench/routing.py [--tasks 1000] [--capacity 6] [--json]

Starts `grace dev` (webserver + daemon, SQLite) with a temporary DAGSTER_HOME and a run
queue of the given capacity over three origins (alpha and beta with quotas, gamma unlisted
under default_quota). Submits every task at once (the project's echo handler, no sleep) and
waits until each has ended. Queue latency is from the task row (received_at to queued_at,
the creation time of its run); concurrency comes from the run records' start and end times.
The last line with --json is one object: submit_to_queued_p50_ms, submit_to_queued_p95_ms,
tasks_per_s, capacity, max_concurrent_total, origins {origin: {quota, max_concurrent}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.devserver import DevServer, free_port  # noqa: E402
from tests.helpers.routing_daemon import TaskDriver, max_concurrency, routing_manifest  # noqa: E402

ORIGINS = ("alpha", "beta", "gamma")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000, help="tasks to submit, spread over 3 origins")
    parser.add_argument("--capacity", type=int, default=6, help="routing.capacity (runs at once)")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds to wait for every task to end")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    args = parser.parse_args()
    quotas = {"alpha": max(1, args.capacity // 2), "beta": max(1, args.capacity // 3)}
    default_quota = max(1, args.capacity // 6)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        manifest = routing_manifest(root, args.capacity, quotas, default_quota)
        home = root / "dagster_home"
        with DevServer(manifest, home, free_port(), root / "dagster-dev.log"):
            driver = TaskDriver(manifest, home)
            started = time.monotonic()
            task_ids = [
                driver.submit(type="echo", origin=ORIGINS[n % 3], payload={"message": f"task {n}"})
                for n in range(args.tasks)
            ]
            print(f"submitted {len(task_ids)} tasks in {time.monotonic() - started:.1f} s", flush=True)
            records = driver.wait_until_ended(task_ids, timeout=args.timeout)
            runs = driver.run_records(task_ids)
            driver.close()
    waits = [(r.queued_at - r.received_at).total_seconds() * 1000 for r in records.values() if r.queued_at]
    first = min(record.received_at for record in records.values())
    last = max(record.finished_at for record in records.values())
    total, per_origin = max_concurrency(runs)
    failed = sum(record.status != "succeeded" for record in records.values())
    result = {
        "tasks": len(task_ids),
        "failed": failed,
        "submit_to_queued_p50_ms": round(statistics.median(waits)),
        "submit_to_queued_p95_ms": round(percentile(waits, 0.95)),
        "tasks_per_s": round(len(task_ids) / (last - first).total_seconds(), 3),
        "capacity": args.capacity,
        "max_concurrent_total": total,
        "origins": {
            origin: {"quota": quotas.get(origin, default_quota), "max_concurrent": per_origin.get(origin, 0)}
            for origin in ORIGINS
        },
    }
    print(
        f"{len(task_ids)} tasks ({failed} failed): submit->queued p50 {result['submit_to_queued_p50_ms']} ms, "
        f"p95 {result['submit_to_queued_p95_ms']} ms; {result['tasks_per_s']} tasks/s; "
        f"max concurrent {total}/{args.capacity}, "
        + ", ".join(f"{o} {v['max_concurrent']}/{v['quota']}" for o, v in result["origins"].items())
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

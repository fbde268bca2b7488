"""The soak bench's 2-minute mode (CI's): `bench/soak.py --minutes 2 --json` against a real `grace dev` with
the HTTP API, real model, file churn and routed tasks; the issue's goals that two minutes can judge."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
KEYS = {
    "minutes",
    "rss_growth_pct",
    "rss",
    "coverage_end",
    "drop_to_searchable_p50_s",
    "drop_to_searchable_p95_s",
    "task_wait_p50_ms",
    "task_wait_p95_ms",
    "errors",
    "error_list",
    "counts",
}
# bench/freshness.py's goal, p95 <= 6 s, is for one file at a time on an idle machine. Here the churn alone
# keeps about one core busy, and with other work on the 2 cores p95 was 27 to 89 s (load averages 10 to 20):
# this bound only catches writes left to a slow path (a periodic scan, a stuck queue), not a slower push.
SEARCHABLE_P95_BOUND_S = 60.0
# The goal, 10%, is for 30 minutes after a 6-minute warm-up. Here 90 s follow a 30 s warm-up, while caches
# (Dagster's, SQLAlchemy's, the allocator's arenas) still fill: only a gross leak shows in so short a run.
RSS_GROWTH_BOUND_PCT = 25.0


def test_two_minutes_of_churn_end_without_errors_and_fully_indexed(onnx_model_cache):
    finished = subprocess.run(
        [sys.executable, str(BENCH), "--minutes", "2", "--json"], capture_output=True, text=True, timeout=540
    )
    assert finished.returncode == 0, finished.stderr[-5000:]
    figures = json.loads(finished.stdout.strip().splitlines()[-1])
    assert KEYS <= figures.keys(), KEYS - figures.keys()
    assert figures["errors"] == 0, finished.stdout
    assert figures["coverage_end"] == 1.0, finished.stdout
    assert figures["counts"]["measured_writes"] > 0 and figures["task_wait_p95_ms"] is not None, finished.stdout
    assert math.isfinite(figures["drop_to_searchable_p95_s"]), finished.stdout
    assert figures["drop_to_searchable_p95_s"] < SEARCHABLE_P95_BOUND_S, finished.stdout
    # Every long-lived process of grace dev was sampled: the API, Dagster's webserver and daemon, the code server.
    sampled = figures["rss"].keys()
    assert {"http api (grace serve)", "dagster-webserver", "dagster-daemon", "code server (grpc)"} <= sampled
    assert figures["rss_growth_pct"] < RSS_GROWTH_BOUND_PCT, finished.stdout
    assert not figures["vanished_processes"], finished.stdout

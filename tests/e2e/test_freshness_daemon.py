"""Under a real `grace dev`: a dropped file is pushed (launched through the webserver's GraphQL API),
embedded by the torch-free backend, and indexed by its own ingest run, with no rebuild run and no
second run from the sensor. Figures (seconds) live in bench/freshness.py, not here."""

from __future__ import annotations

import time

from dagster import DagsterInstance, RunsFilter

from grace.core.manifest import load_manifest
from grace.resources.index.search import Searcher, index_stats
from grace.resources.wiring.dagster_resources import build_resources
from tests.helpers.daemon import wait_for
from tests.helpers.devserver import DevServer, free_port

SENSOR_LOOPS_SECONDS = 12  # two loops of Dagster's sensor daemon (5 s at best each)


def test_a_drop_is_pushed_and_indexed_by_its_own_run(tmp_path, onnx_model_cache):
    manifest_path = tmp_path / "grace.yaml"
    manifest_path.write_text(
        "state_dir: state\nsources:\n  - {name: documents, path: inbox}\n"
        "index: {shards: 2, trees: 10}\nembedding: {backend: onnx-int8}\n"
    )
    manifest = load_manifest(manifest_path)
    home = tmp_path / "dagster_home"
    inbox = manifest.sources[0].path
    with DevServer(manifest_path, home, free_port(), tmp_path / "dagster-dev.log"):
        resources = build_resources(manifest)
        searcher = Searcher(resources["store"].get(), resources["vector_index"].get(), resources["embedder"].get())
        instance = DagsterInstance.from_config(str(home))

        def pushed_runs() -> list:
            return instance.get_runs(filters=RunsFilter(job_name="ingest", tags={"grace/reason": "push"}))

        def top_path(query: str) -> str | None:
            hits = searcher.search(query, k=1)
            return hits[0].path if hits else None

        # The watcher (and its pusher) start with the sensor's first tick, which finds this file by scanning.
        (inbox / "warmup.txt").write_text("A first note, about the weather in spring.")
        wait_for(lambda: top_path("spring weather") == "warmup.txt", timeout=120, every=0.2)
        pushed_before = len(pushed_runs())

        (inbox / "volcano.txt").write_text("Lava poured from the erupting volcano and ash closed the airport.")
        [pushed] = wait_for(lambda: pushed_runs()[: len(pushed_runs()) - pushed_before], timeout=30, every=0.2)
        assert pushed.tags["grace/origin"] == "ingest" and pushed.tags["dagster/sensor_name"] == "watch_documents"
        wait_for(lambda: top_path("an eruption disrupted flights") == "volcano.txt", timeout=60, every=0.2)

        def fully_indexed() -> bool:
            total = index_stats(searcher.store, searcher.index, searcher.embedder.model_id)["total"]
            return total["index_coverage"] == 1.0 and total["indexed_embeddings"] == 2

        wait_for(fully_indexed, timeout=60, every=0.2)
        assert instance.get_runs(filters=RunsFilter(job_name="rebuild_index")) == [], "the ingest runs indexed"

        time.sleep(SENSOR_LOOPS_SECONDS)  # the sensor's next ticks see the pushed run's key and request nothing
        same_key = instance.get_runs(filters=RunsFilter(tags={"dagster/run_key": pushed.tags["dagster/run_key"]}))
        assert [run.run_id for run in same_key] == [pushed.run_id]
        instance.dispose()

"""End to end under a real `grace dev` (dagster dev: webserver + daemon) on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy
import yaml
from dagster import DagsterInstance
from sqlalchemy.pool import NullPool

from grace.core.manifest import load_manifest
from grace.deploy.process_group import group_alive
from grace.resources.text.chunking import chunker_for
from grace.resources.wiring.dagster_resources import build_resources
from tests.helpers.daemon import grace, graphql, wait_for
from tests.helpers.devserver import DevServer, free_port
from tests.helpers.store_writes import unprocessed_documents

DOCUMENTS = {
    "volcano.txt": "Lava poured from the erupting volcano and ash clouds closed the airport.",
    "notes/chess.md": "She sacrificed her queen to force checkmate in three moves.",
    "recipe.txt": "Simmer the tomatoes with garlic and basil for a rich pasta sauce.",
    "orchard.txt": "The apple trees in the orchard blossomed early after a mild spring.",
}


WORKSPACE_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on RepositoryLocation { repositories {
    assetNodes { assetKey { path } } sensors { name sensorState { status } } } } } } } } }"""


def test_dropped_files_are_found_by_grace_search_under_dagster_dev(tmp_path, storage):
    """Runs twice: on the embedded SQLite default, and with everything on PostgreSQL."""
    manifest = tmp_path / "grace.yaml"
    manifest.write_text(
        f"state_dir: state\n{storage}"
        "sources:\n  - {name: documents, path: inbox/documents}\nindex: {shards: 2, trees: 10}\n"
    )
    home = tmp_path / "dagster_home"
    inbox = tmp_path / "inbox" / "documents"
    with DevServer(manifest, home, free_port(), tmp_path / "dagster-dev.log") as server:
        group = server.process.pid
        assert inbox.is_dir(), "grace dev creates the watched folder"
        rendered = yaml.safe_load((home / "dagster.yaml").read_text())
        assert rendered["telemetry"] == {"enabled": False}
        assert ("postgres" in rendered.get("storage", {})) == bool(storage)
        [location] = graphql(server.port, WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
        assert (location["name"], location["loadStatus"]) == ("grace", "LOADED")
        [repository] = location["locationOrLoadError"]["repositories"]
        assets = {"/".join(node["assetKey"]["path"]) for node in repository["assetNodes"]}
        pipeline = {"sources/documents", "documents", "chunks", "embeddings", "vector_index"}
        assert assets == pipeline | {"index_status", "routing_stats", "key_versions", "key_status"}
        sensors = {sensor["name"]: sensor["sensorState"]["status"] for sensor in repository["sensors"]}
        expected = ["watch_documents", "index_freshness", "keys_overdue", "run_health", "route_tasks", "task_status"]
        assert sensors == dict.fromkeys(expected, "RUNNING")
        for name, text in DOCUMENTS.items():
            (inbox / name).parent.mkdir(parents=True, exist_ok=True)
            (inbox / name).write_text(text)

        def indexed_everything():
            stats = json.loads(grace("stats", "--json", "-c", str(manifest), cwd=tmp_path).stdout)["total"]
            return stats if stats["indexed_embeddings"] == len(DOCUMENTS) and stats["index_coverage"] == 1.0 else None

        wait_for(indexed_everything, timeout=240)
        result = grace(
            "search", "an eruption disrupted flights", "-k", "2", "--json", "-c", str(manifest), cwd=tmp_path
        )
        hits = json.loads(result.stdout)
        assert hits[0]["path"] == "volcano.txt" and hits[0]["source"] == "documents"
        assert hits[0]["text"] == DOCUMENTS["volcano.txt"]

        instance = DagsterInstance.from_config(str(home))
        ingest_runs = [run for run in instance.get_runs() if run.job_name == "ingest"]
        assert ingest_runs and all(run.tags["grace/origin"] == "ingest" for run in ingest_runs)
        assert all(int(run.tags["grace/data_size_bytes"]) > 0 for run in ingest_runs)
        assert {run.tags["dagster/partition"] for run in ingest_runs} <= {"0", "1"}
        instance.dispose()

        # watchdog events in the code server drive the next ticks: delete, rename, edit
        (inbox / "volcano.txt").unlink()
        (inbox / "notes" / "chess.md").rename(inbox / "chess-final.md")
        (inbox / "recipe.txt").write_text("Roast the peppers and blend them into a smoky soup.")

        resources = build_resources(load_manifest(manifest))
        store = resources["store"].get()  # with the KEK grace dev created
        model = resources["embedder"].get()  # the manifest's: onnx-int8 by default
        settings = chunker_for(load_manifest(manifest), model.tokenizer_file).settings_key

        def changes_applied():
            stats = json.loads(grace("stats", "--json", "-c", str(manifest), cwd=tmp_path).stdout)["total"]
            settled = (
                stats["documents_active"] == len(DOCUMENTS) - 1
                and stats["documents_deleted"] == 0
                and stats["index_coverage"] == 1.0
            )
            work_left = any(unprocessed_documents(store, shard, 2) for shard in range(2))
            rechunk = store.ledger.shards_needing_ingest("documents", 2, settings, model.model_id)
            return settled and not work_left and not rechunk

        wait_for(changes_applied, timeout=240)

        def top_hits(query: str, k: int) -> list[dict]:
            return json.loads(grace("search", query, "-k", str(k), "--json", "-c", str(manifest), cwd=tmp_path).stdout)

        # each query names one document; k=1 so a search that returned everything would not pass
        [chess] = top_hits("a chess game won by sacrificing the queen", 1)
        assert chess["path"] == "chess-final.md" and chess["text"] == DOCUMENTS["notes/chess.md"]
        [soup] = top_hits("a smoky soup made from peppers", 1)
        assert soup["path"] == "recipe.txt" and "peppers" in soup["text"]
        # the deleted file would rank first for its own paraphrase; every remaining document answers instead
        everything = top_hits("an eruption disrupted flights", 10)
        assert sorted(hit["path"] for hit in everything) == ["chess-final.md", "orchard.txt", "recipe.txt"]
        assert not any("Lava" in hit["text"] or "tomatoes" in hit["text"] for hit in everything)
    assert not group_alive(group), "every process grace dev started is stopped"
    if storage:
        assert_everything_on_postgresql(load_manifest(manifest).store_url, home)


def assert_everything_on_postgresql(url: str, home: Path) -> None:
    """Dagster's runs and Grace's documents side by side in the one database; no SQLite run storage."""
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        jobs = connection.exec_driver_sql("SELECT pipeline_name FROM runs").scalars().all()
        documents = connection.exec_driver_sql("SELECT count(*) FROM documents").scalar_one()
    engine.dispose()
    assert "ingest" in jobs and documents >= len(DOCUMENTS) - 1
    assert not (home / "history" / "runs.db").exists()

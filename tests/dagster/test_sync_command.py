"""`grace sync` on the real model and the real store: a one-shot import, what it reports, and its leases."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunsFilter

from grace.api import stats
from grace.cli.main import main
from grace.cli.sync import Progress
from grace.core.manifest import load_manifest
from grace.core.names import REASON_TAG
from grace.deploy.instance import render_instance
from grace.resources.embedding.embedder import Embedder
from grace.resources.runs.lease import ShardLeases
from grace.resources.store.store import Store
from tests.helpers.harness import manifest_text

OTHER_SOURCE = "  - name: notes\n    path: notes\n    patterns: ['**/*.txt']\n    origin: ingest\n"


@pytest.fixture
def project(tmp_path, store_url, monkeypatch) -> Path:
    """A fresh project: grace.yaml and its folder, no key file, no Dagster instance, on either backend."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    (tmp_path / "grace.yaml").write_text(manifest_text(store_url, shards=2, extra_sources=OTHER_SOURCE))
    (tmp_path / "inbox").mkdir()
    return tmp_path


def grace(capsys, project: Path, *args: str) -> tuple[int, str, str]:
    code = main([*args, "-c", str(project / "grace.yaml")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sync_json(capsys, project: Path) -> tuple[int, dict, str]:
    code, out, err = grace(capsys, project, "sync", "--json")
    return code, json.loads(out.splitlines()[-1]), err


def test_sync_imports_a_folder_then_reports_only_what_changed(project, capsys):
    inbox = project / "inbox"
    (inbox / "whales.txt").write_text("Blue whales are the largest animals ever known to have lived.")
    (inbox / "trains.md").write_text("The night train to Vienna leaves from platform nine at 22:40.")
    (inbox / "broken.txt").write_bytes(b"\xc3\x28 invalid")
    key_file = project / "state" / "master.key"
    assert not key_file.exists()

    code, first, err = sync_json(capsys, project)
    assert code == 0, err
    assert key_file.is_file() and key_file.stat().st_mode & 0o777 == 0o600
    assert f"created the key-encryption key {key_file}" in err
    assert (first["new"], first["changed"], first["deleted"], first["read"]) == (3, 0, 0, 2)
    assert first["chunks_embedded"] == 2 and first["failed_runs"] == 0 and first["runs"]
    [quarantined] = first["quarantined"]
    assert (quarantined["source"], quarantined["path"]) == ("docs", "broken.txt")
    assert "not UTF-8" in quarantined["reason"]

    code, out, _ = grace(capsys, project, "search", "enormous sea mammals", "-k", "1", "--local")
    assert code == 0 and out.startswith(" 1.") and "docs/whales.txt #0" in out

    code, again, _ = sync_json(capsys, project)
    assert code == 0
    assert (again["new"], again["changed"], again["deleted"], again["chunks_embedded"]) == (0, 0, 0, 0)
    assert again["quarantined"] == [] and again["runs"] == []

    (inbox / "trains.md").write_text("Buses to Graz leave every hour from the central station.")
    (inbox / "whales.txt").unlink()
    code, out, _ = grace(capsys, project, "sync")
    assert code == 0
    assert "0 new, 1 changed, 0 moved, 1 deleted, 0 quarantined; 1 chunks embedded" in out
    code, out, _ = grace(capsys, project, "search", "coach timetable to Graz", "-k", "5", "--json", "--local")
    assert [hit["path"] for hit in json.loads(out)] == ["trains.md"]


def test_unknown_source_is_an_error_naming_the_sources(project, capsys):
    code, out, err = grace(capsys, project, "sync", "--source", "nope")
    assert code == 2 and out == ""
    assert "--source 'nope' is not a source of grace.yaml; its sources are: docs, notes" in err
    assert not (project / "state" / "master.key").exists(), "refused before anything is created"


def test_source_limits_the_scan_to_that_folder(project, capsys):
    (project / "inbox" / "whales.txt").write_text("Blue whales are the largest animals ever known to have lived.")
    (project / "notes").mkdir()
    (project / "notes" / "owls.txt").write_text("Owls hunt at night and swallow their prey whole.")
    code, out, err = grace(capsys, project, "sync", "--source", "notes", "--json")
    report = json.loads(out.splitlines()[-1])
    assert code == 0, err
    assert report["sources"] == ["notes"] and report["new"] == 1 and report["chunks_embedded"] == 1


def test_a_failed_run_exits_non_zero_and_says_which(project, capsys, monkeypatch):
    (project / "inbox" / "whales.txt").write_text("Blue whales are the largest animals ever known to have lived.")

    def explode(self, texts):
        raise RuntimeError("the model exploded")

    monkeypatch.setattr(Embedder, "encode", explode)
    code, out, _ = grace(capsys, project, "sync")
    assert code == 1
    assert "1 failed" in out and "step embeddings: " in out and "the model exploded" in out
    monkeypatch.undo()
    code, report, _ = sync_json(capsys, project)
    assert code == 0 and report["new"] == 0 and report["chunks_embedded"] == 1, "the next sync finishes the work"


def test_sync_waits_while_someone_else_holds_the_shard(tmp_path, store_url, capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    (tmp_path / "grace.yaml").write_text(manifest_text(store_url, shards=1))
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "whales.txt").write_text("Blue whales are the largest animals ever known to have lived.")
    store = Store(load_manifest(tmp_path / "grace.yaml").store_url)
    leases = ShardLeases(store.engine)
    assert leases.try_acquire(0, "someone-elses-run") is None
    seen_while_held: list[dict] = []

    def release_later():
        time.sleep(4)
        # Still held: the sync's run must not have read, chunked or embedded anything of the shard.
        seen_while_held.append(store.documents.shard_counts(0, 1))
        leases.release_run("someone-elses-run")

    releaser = threading.Thread(target=release_later)
    started = time.monotonic()
    releaser.start()
    try:
        code, report, err = sync_json(capsys, tmp_path)
    finally:
        releaser.join()
        store.dispose()
    assert code == 0, err
    assert time.monotonic() - started >= 4, "the run waited for the lease"
    assert "shard 0 is busy with run someone-elses-run: waiting for its lease" in err
    [held] = seen_while_held
    assert (held["documents_pending"], held["documents_active"], held["chunks"]) == (1, 0, 0)
    assert report["chunks_embedded"] == 1 and report["failed_runs"] == 0


def test_runs_go_to_the_projects_dagster_instance_when_it_is_rendered(project, capsys):
    manifest = load_manifest(project / "grace.yaml")
    render_instance(manifest, manifest.dagster_home, project)
    (project / "inbox" / "whales.txt").write_text("Blue whales are the largest animals ever known to have lived.")
    code, report, err = sync_json(capsys, project)
    assert code == 0, err
    instance = DagsterInstance.from_config(str(manifest.dagster_home))
    try:
        runs = instance.get_runs(filters=RunsFilter(tags={REASON_TAG: "grace sync"}))
    finally:
        instance.dispose()
    assert sorted(run.run_id for run in runs) == sorted(run["run_id"] for run in report["runs"])
    assert {run.tags["dagster/partition"] for run in runs} <= {"0", "1"}


def test_a_change_too_large_for_the_ingest_run_gets_its_index_rebuilt(tmp_path, store_url, capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    (tmp_path / "grace.yaml").write_text(manifest_text(store_url, shards=1, inline_max_delta=0))
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "whales.txt").write_text("Blue whales are the largest animals ever known to have lived.")
    code, report, err = sync_json(capsys, tmp_path)
    assert code == 0, err
    assert [(run["job"], run["success"]) for run in report["runs"]] == [("ingest", True), ("rebuild_index", True)]
    total = stats(tmp_path / "grace.yaml")["total"]
    assert (total["indexed_embeddings"], total["pending"], total["index_coverage"]) == (1, 0, 1.0)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise():
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = Progress(stream)
        progress.start(2)
        progress.advance("shard 0 ok")
        progress.advance("shard 1 ok")
        progress.finish()
    assert "\r[###############---------------] 1/2 shards" in terminal.getvalue()
    assert "\r[##############################] 2/2 shards" in terminal.getvalue()
    assert "\r" not in pipe.getvalue()
    assert pipe.getvalue().splitlines()[-2:] == ["grace sync: 1/2 shard 0 ok", "grace sync: 2/2 shard 1 ok"]


def test_sync_holds_the_deletes_of_a_vanished_folder_and_says_so(project, capsys):
    for name in ("a.txt", "b.txt"):
        (project / "inbox" / name).write_text(f"note {name} about herons")
    code, first, err = sync_json(capsys, project)
    assert code == 0 and first["new"] == 2, err
    shutil.rmtree(project / "inbox")
    code, out, _ = grace(capsys, project, "sync")
    assert code == 0 and "0 deleted" in out
    assert "docs: 2 deletes held (the folder holds no file the patterns match, since " in out
    code, out, _ = grace(capsys, project, "search", "herons", "-k", "5", "--json", "--local")
    assert sorted(hit["path"] for hit in json.loads(out)) == ["a.txt", "b.txt"], "still searchable"

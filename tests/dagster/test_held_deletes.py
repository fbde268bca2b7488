"""A vanished or emptied folder deletes nothing by itself (issue 25, item 1), on SQLite and
PostgreSQL: the scan holds the deletes, the documents stay searchable, the tick, `grace status`
and `grace stats` say why, and the hold ends when the folder comes back or the user releases it."""

from __future__ import annotations

import shutil

import pytest
from dagster import build_sensor_context

from grace.cli.main import main as grace
from grace.core.manifest import SourceConfig
from grace.sensors.watcher import FolderWatcher, watcher_for
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment

FILES = 10


@pytest.fixture
def deployment(tmp_path, store_url) -> Deployment:
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2)
    for n in range(FILES):
        deployment.drop(f"note{n}.txt", f"note {n} about herons number{n}")
    deployment.sync()
    assert len(live_paths(deployment)) == FILES
    return deployment


def live_paths(deployment: Deployment) -> set[str]:
    return {hit.path for hit in deployment.search("note about herons", k=50, mode="lexical")}


def tick_message(deployment: Deployment) -> tuple[list, str]:
    """(run requests, skip reason) of one folder-sensor tick."""
    context = build_sensor_context(
        instance=deployment.instance, cursor=deployment.cursors.get("watch_docs"), resources=deployment.resources
    )
    result = deployment.defs.resolve_sensor_def("watch_docs")(context)
    deployment.cursors["watch_docs"] = result.cursor
    return list(result.run_requests or []), result.skip_reason.skip_message if result.skip_reason else ""


def test_a_folder_renamed_away_holds_its_deletes_until_it_comes_back(deployment, capsys):
    away = deployment.root / "away"
    deployment.inbox.rename(away)
    requests, message = tick_message(deployment)
    assert requests == []
    assert "10 deletes held (the folder is missing" in message and "grace sources release docs" in message
    assert not deployment.inbox.exists(), "nothing recreates the missing folder"
    assert len(live_paths(deployment)) == FILES, "the documents stay searchable"
    held = deployment.store.holds.of("docs")
    assert (held.deletes, held.reason) == (FILES, "the folder is missing")
    assert grace(["stats", "-c", str(deployment.root / "grace.yaml")]) == 0
    assert "documents of docs: 10 deletes held (the folder is missing, since " in capsys.readouterr().out
    away.rename(deployment.inbox)
    requests, message = tick_message(deployment)
    assert requests == [] and "held" not in message, "back as it was: nothing to read again"
    assert deployment.store.holds.of("docs") is None
    assert len(live_paths(deployment)) == FILES


def test_a_folder_replaced_by_an_empty_one_holds_even_when_every_delete_is_allowed(deployment):
    shutil.rmtree(deployment.inbox)
    deployment.inbox.mkdir()
    _requests, message = tick_message(deployment)
    assert "(the folder holds no file the patterns match" in message
    assert len(live_paths(deployment)) == FILES


def test_deleting_more_than_the_fraction_holds_until_released(deployment, capsys):
    for n in range(6):
        (deployment.inbox / f"note{n}.txt").unlink()
    _requests, message = tick_message(deployment)
    assert "the scan would delete 6 of 10 documents, more than max_delete_fraction 0.5" in message
    assert len(live_paths(deployment)) == FILES
    config = str(deployment.root / "grace.yaml")
    assert grace(["sources", "release", "docs", "-c", config]) == 0
    assert "docs: released 6 deletes held" in capsys.readouterr().out
    assert deployment.store.holds.of("docs").release
    deployment.sync()
    assert live_paths(deployment) == {f"note{n}.txt" for n in range(6, FILES)}
    assert deployment.store.holds.of("docs") is None
    assert grace(["sources", "release", "docs", "-c", config]) == 0
    assert "nothing to release" in capsys.readouterr().out
    assert grace(["sources", "release", "nope", "-c", config]) == 2
    assert "no source 'nope' in grace.yaml; its sources: docs" in capsys.readouterr().err


def test_deletes_below_the_fraction_apply_as_before(deployment):
    for n in range(2):
        (deployment.inbox / f"note{n}.txt").unlink()
    deployment.sync()
    assert live_paths(deployment) == {f"note{n}.txt" for n in range(2, FILES)}
    assert deployment.store.holds.of("docs") is None


def test_a_raised_fraction_lets_a_bulk_delete_through(tmp_path, store_url):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=1, max_delete_fraction=0.9)
    for n in range(FILES):
        deployment.drop(f"note{n}.txt", f"note {n} about herons")
    deployment.sync()
    for n in range(6):
        (deployment.inbox / f"note{n}.txt").unlink()
    deployment.sync()
    assert live_paths(deployment) == {f"note{n}.txt" for n in range(6, FILES)}


def test_the_watcher_never_creates_a_missing_folder_and_drops_one_renamed_away(tmp_path):
    source = SourceConfig(name="gone", path=tmp_path / "inbox")
    assert watcher_for(source) == (None, True)
    assert not source.path.exists()
    source.path.mkdir()
    watcher = FolderWatcher(source)
    try:
        assert watcher.alive
        source.path.rename(tmp_path / "elsewhere")
        source.path.mkdir()
        assert not watcher.alive, "a watch on the folder renamed away does not watch the one there now"
    finally:
        watcher.stop()

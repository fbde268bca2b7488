"""A vanished or emptied folder deletes nothing by itself (issue 25, item 1), on SQLite and
PostgreSQL: the scan holds the deletes, the documents stay searchable, the tick, `grace status`
and `grace stats` say why, and the hold ends when the folder comes back or the user releases it."""

from __future__ import annotations

import shutil

import pytest
from dagster import AssetCheckKey, AssetKey, AssetSelection, build_sensor_context, materialize

from grace.cli.main import main as grace
from grace.core.manifest import SourceConfig
from grace.sensors.watcher import FolderWatcher, watcher_for
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment, tick_until

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


def tick_message(deployment: Deployment, checks: list | None = None) -> tuple[list, str]:
    """(run requests, skip reason) of one folder-sensor tick; its check evaluations go into checks."""
    context = build_sensor_context(
        instance=deployment.instance, cursor=deployment.cursors.get("watch_docs"), resources=deployment.resources
    )
    result = deployment.defs.resolve_sensor_def("watch_docs")(context)
    deployment.cursors["watch_docs"] = result.cursor
    if checks is not None:
        checks.extend(result.asset_events)
    return list(result.run_requests or []), result.skip_reason.skip_message if result.skip_reason else ""


def test_a_folder_renamed_away_holds_its_deletes_until_it_comes_back(deployment, capsys):
    away = deployment.root / "away"
    deployment.inbox.rename(away)
    checks: list = []
    requests, message = tick_message(deployment, checks)
    [failed] = checks
    assert (failed.check_name, failed.asset_key.path, failed.passed) == ("deletes_not_held", ["sources", "docs"], False)
    assert failed.severity.value == "ERROR" and "10 deletes held" in failed.description
    assert requests == []
    assert "10 deletes held (the folder is missing" in message and "grace sources release docs" in message
    assert not deployment.inbox.exists(), "nothing recreates the missing folder"
    assert len(live_paths(deployment)) == FILES, "the documents stay searchable"
    held = deployment.store.holds.of("docs")
    assert (held.deletes, held.reason) == (FILES, "the folder is missing")
    assert grace(["stats", "-c", str(deployment.root / "grace.yaml")]) == 0
    assert "documents of docs: 10 deletes held (the folder is missing, since " in capsys.readouterr().out
    tick_message(deployment, checks)
    assert len(checks) == 1, "the check is reported when the hold begins or ends, not every tick"
    executed = materialize(  # the UI's Execute on the check reads the same hold
        [*deployment.defs.assets, *deployment.defs.asset_checks],
        selection=AssetSelection.checks(AssetCheckKey(AssetKey(["sources", "docs"]), "deletes_not_held")),
        resources=deployment.resources,
        instance=deployment.instance,
    )
    [evaluation] = executed.get_asset_check_evaluations()
    assert not evaluation.passed and "10 deletes held (the folder is missing" in evaluation.description
    away.rename(deployment.inbox)
    requests, message = tick_message(deployment, checks)
    assert requests == [] and "held" not in message, "back as it was: nothing to read again"
    assert [check.passed for check in checks] == [False, True]
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


def test_with_events_a_folder_that_comes_back_is_seen_at_the_next_tick_and_watched_again(tmp_path, store_url):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=1, events=True)
    for n in range(3):
        deployment.drop(f"note{n}.txt", f"note {n} about herons")
    deployment.sync()
    away = tmp_path / "away"
    deployment.inbox.rename(away)
    _requests, message = tick_message(deployment)
    assert "3 deletes held (the folder is missing" in message
    away.rename(deployment.inbox)
    _requests, message = tick_message(deployment)
    assert deployment.store.holds.of("docs") is None and "held" not in message, "seen at once, not at a reconcile"
    watcher, _started = watcher_for(deployment.manifest.sources[0])
    assert watcher is not None and watcher.alive
    deployment.drop("late.txt", "a late note about herons")
    tick_until(deployment, lambda requests: bool(requests))  # its event, from the new watch
    assert len(live_paths(deployment)) == 3

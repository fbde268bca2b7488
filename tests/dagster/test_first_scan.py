"""A first scan too large for one tick goes on over several, carried by the sensor's cursor: it ends
with the folder fully recorded, and every file in the run requests of exactly one tick."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from grace.resources.db.schema import changes, documents
from grace.sensors import scan
from grace.sensors.push import Pusher
from grace.sensors.scan import Dirty
from grace.sensors.watcher import watcher_for
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment

FILES = 30
BATCH = 7


@pytest.fixture
def one_batch_per_tick(monkeypatch):
    monkeypatch.setattr(scan, "SCAN_BUDGET_SECONDS", 0)
    monkeypatch.setattr(scan, "RECORD_BATCH", BATCH)


def recorded_changes(deployment: Deployment, after: int, up_to: int) -> list[tuple[str, int]]:
    """(path, shard) of each change event in a tick's range of change ids."""
    query = (
        select(documents.c.path, documents.c.shard)
        .join(changes, changes.c.document_id == documents.c.id)
        .where(changes.c.id > after, changes.c.id <= up_to)
    )
    with deployment.store.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def cursor_of(deployment: Deployment) -> dict:
    return json.loads(deployment.cursors.get("watch_docs") or "{}")


@pytest.mark.parametrize("events", [False, True], ids=["full scans", "watchdog"])
def test_a_first_scan_over_several_ticks_requests_every_file_once(tmp_path, store_url, one_batch_per_tick, events):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2, events=events)
    expected = {deployment.drop(f"f{n % 3}/note{n:02d}.txt", f"note {n} about topic{n}").name for n in range(FILES)}
    requested: list[str] = []
    ticks = 0
    while ticks == 0 or cursor_of(deployment)["scan_unfinished"]:
        assert ticks < 20, "the scan never finished"
        before = cursor_of(deployment).get("last_change", 0)
        requests = deployment.tick()
        recorded = recorded_changes(deployment, before, cursor_of(deployment)["last_change"])
        assert 0 < len(recorded) <= BATCH
        assert {request.partition_key for request in requests} == {str(shard) for _path, shard in recorded}
        requested += [path.rsplit("/", 1)[-1] for path, _shard in recorded]
        ticks += 1
        if ticks == 2:  # sorts before every file recorded so far: a later tick must still find it
            expected.add(deployment.drop("a-late.txt", "a late note about otters").name)
    assert ticks == -(-(FILES + 1) // BATCH)
    assert sorted(requested) == sorted(expected), "a file was requested twice, or never"
    assert len(deployment.store.ledger.documents_of("docs")) == FILES + 1
    assert deployment.tick() == []
    for shard in range(2):
        assert deployment.ingest(shard).success
    assert all(row.status == "active" for row in deployment.store.ledger.documents_of("docs").values())
    assert [hit.path for hit in deployment.search("late note otters", k=1)] == ["a-late.txt"]


def test_a_mass_rename_over_several_ticks_keeps_every_document(tmp_path, store_url, monkeypatch):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2)
    for n in range(6):
        deployment.drop(f"draft/n{n}.txt", f"note {n} about comet{n}")
    deployment.sync(rebuild=False)
    ids = {path.rsplit("/", 1)[-1]: row.id for path, row in deployment.store.ledger.documents_of("docs").items()}
    embedded = deployment.embedder.encoded
    (deployment.inbox / "draft").rename(deployment.inbox / "final")
    monkeypatch.setattr(scan, "SCAN_BUDGET_SECONDS", 0)  # one file hashed per tick
    ticks = 0
    while ticks == 0 or cursor_of(deployment)["scan_unfinished"]:
        assert ticks < 20, "the scan never finished"
        deployment.tick()
        ticks += 1
        known = deployment.store.ledger.documents_of("docs")
        assert len(known) == 6, "a document left before its rename was found"
    assert ticks == 6
    assert {path.rsplit("/", 1)[-1]: row.id for path, row in known.items()} == ids
    assert all(path.startswith("final/") for path in known)
    deployment.sync(rebuild=False)
    assert deployment.embedder.encoded == embedded


def test_a_burst_too_large_for_one_push_is_left_to_the_sensor(tmp_path, store_url, one_batch_per_tick, monkeypatch):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2, events=True)
    deployment.tick()  # starts the watcher over the empty folder
    watcher, _started = watcher_for(deployment.manifest.sources[0])
    launched: list[dict[str, str]] = []
    pusher = Pusher(
        deployment.manifest,
        deployment.manifest.sources[0],
        watcher,
        deployment.store,
        lambda tags: launched.append(tags) or f"run-{len(launched)}",
        deployment.instance,
    )
    pusher.stop()  # pushed by hand below, so that the burst is one push
    store, recorded = deployment.store, []
    real_record_scan = store.ledger.record_scan

    def recording(source, changed, *rest, **options):
        recorded.extend(observed.path for observed in changed)
        return real_record_scan(source, changed, *rest, **options)

    monkeypatch.setattr(store.ledger, "record_scan", recording)
    names = {deployment.drop(f"burst{n:02d}.txt", f"burst note {n} about gannets").name for n in range(FILES)}
    with watcher.lock:
        watcher.journal.give_back(Dirty(files=names))  # whatever watchdog has not delivered yet
    pusher.push()
    assert len(recorded) == BATCH and launched
    with watcher.lock:
        assert watcher.journal.drain() is None, "the rest is owed to the sensor's full scan"
        watcher.journal.give_back(None)
    while len(recorded) < FILES:
        assert deployment.tick(), "each tick records a batch and requests its runs"
    assert sorted(recorded) == sorted(names), "a file was recorded twice, or never"
    assert not cursor_of(deployment)["scan_unfinished"]

"""Incremental sync: edits, deletes, renames and duplicates, exactly and at O(changes) cost."""

import json
import threading
import time

import pytest
from dagster import build_sensor_context
from watchdog.events import (
    DirDeletedEvent,
    DirModifiedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from grace.core.manifest import SourceConfig
from grace.core.process_caches import reset_process_caches
from grace.resources.text.chunking import Chunker
from grace.sensors.scan import Dirty
from grace.sensors.watcher import FolderWatcher, Journal, watcher_for
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment, tick_until

PARAGRAPHS = [
    f"Paragraph {i} is about subject{i} and nothing else; it repeats subject{i} words. " * 12 for i in range(8)
]


@pytest.fixture
def deployment(tmp_path, store_url):
    return Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2, max_bytes="1MB")


def paths_found(deployment, query: str, k: int = 5) -> list[str]:
    return [hit.path for hit in deployment.search(query, k)]


def test_edit_reembeds_only_the_changed_chunks(deployment):
    chunker = Chunker(deployment.embedder.tokenizer_file)
    original = "\n\n".join(PARAGRAPHS)
    edited = "\n\n".join(PARAGRAPHS[:-1] + ["A brand new closing paragraph about zebras and only zebras. " * 12])
    deployment.drop("long.txt", original)
    deployment.sync()
    assert len(chunker.split(original)) > 3
    before = deployment.embedder.encoded
    deployment.drop("long.txt", edited)
    deployment.sync(rebuild=False)
    old_hashes = {chunk.chunk_hash for chunk in chunker.split(original)}
    changed = {chunk.chunk_hash for chunk in chunker.split(edited)} - old_hashes
    assert 0 < len(changed) < len(old_hashes)
    assert deployment.embedder.encoded - before == len(changed)
    # the replaced chunk left search at once, though the index still holds its vector
    texts = [hit.text for hit in deployment.search("subject7 paragraph", k=20)]
    assert not any("Paragraph 7" in text for text in texts)
    assert any("zebras" in hit.text for hit in deployment.search("zebras", k=3))
    assert deployment.stats()["total"]["tombstoned"] == len(old_hashes - {c.chunk_hash for c in chunker.split(edited)})


def test_identical_text_is_never_embedded_twice(deployment):
    deployment.drop("a.txt", "shared words about comets")
    deployment.sync()
    before = deployment.embedder.encoded
    deployment.drop("b.txt", "shared words about comets")
    deployment.drop("a.txt", "shared words about comets")  # re-saved, same content
    deployment.sync()
    assert deployment.embedder.encoded == before
    # b.txt reuses a.txt's vector, and a search finds both files through it.
    assert sorted(paths_found(deployment, "shared words about comets")) == ["a.txt", "b.txt"]


def test_delete_leaves_search_after_one_tick_and_run(deployment):
    deployment.drop("keep.txt", "keep this note about owls")
    gone = deployment.drop("gone.txt", "delete this note about owls")
    deployment.sync()
    gone.unlink()
    deployment.tick()
    assert paths_found(deployment, "note about owls") == ["keep.txt"]  # the tick alone hides it
    deployment.sync(rebuild=False)
    stats = deployment.stats()["total"]
    assert stats["total_embeddings"] == 1 and stats["tombstoned"] == 1
    check = deployment.check()
    assert check.passed and check.metadata["orphan_vectors"].value == 1 and "shard" in check.description
    assert check.metadata["stale_shards"].value == 1
    for shard in range(2):
        deployment.rebuild(shard)
    assert deployment.check().passed
    assert deployment.stats()["total"]["tombstoned"] == 0


def test_rename_and_move_keep_the_document_without_reembedding(deployment):
    old = deployment.drop("draft.txt", "a memo about lighthouse keepers")
    deployment.sync()
    before, ids_before = deployment.embedder.encoded, deployment.stats()["total"]["indexed_embeddings"]
    (deployment.inbox / "archive").mkdir()
    old.rename(deployment.inbox / "archive" / "final.txt")
    deployment.sync(rebuild=False)
    assert deployment.embedder.encoded == before
    assert paths_found(deployment, "lighthouse keepers memo", k=1) == ["archive/final.txt"]
    stats = deployment.stats()["total"]
    assert stats["tombstoned"] == 0 and stats["pending"] == 0 and stats["indexed_embeddings"] == ids_before


def test_duplicate_content_is_found_twice_and_survives_one_deletion(deployment):
    text = "two copies of a note about glaciers"
    deployment.drop("one.txt", text)
    copy = deployment.drop("copies/two.txt", text)
    deployment.sync()
    assert sorted(paths_found(deployment, "glaciers note", k=2)) == ["copies/two.txt", "one.txt"]
    copy.unlink()
    deployment.sync()
    assert paths_found(deployment, "glaciers note", k=2) == ["one.txt"]


def test_journal_records_what_watchdog_reports(tmp_path):
    journal = Journal(SourceConfig(name="docs", path=tmp_path, patterns=["**/*.txt"], exclude=[]))
    at = lambda relative: str(tmp_path / relative)  # noqa: E731
    for event in [
        FileCreatedEvent(at("a.txt")),
        FileModifiedEvent(at("skip.bin")),
        FileMovedEvent(at("b.txt"), at("sub/c.txt")),
        DirDeletedEvent(at("old")),
        DirModifiedEvent(at("busy")),  # its entries report themselves
        DirModifiedEvent(str(tmp_path)),
        FileOpenedEvent(at("d.txt")),
        FileCreatedEvent("/elsewhere/e.txt"),
    ]:
        journal.on_any_event(event)
    assert journal.drain() == Dirty(files={"a.txt", "b.txt", "sub/c.txt"}, folders={"old"})
    assert journal.drain() == Dirty()
    journal.on_any_event(DirDeletedEvent(str(tmp_path)))
    assert journal.drain() is None  # the folder itself went away: only a full scan can tell


def test_watchdog_events_drive_ticks_and_reconcile_finds_missed_changes(tmp_path):
    deployment = Deployment(tmp_path, None, HashingEmbedderResource(), shards=2, events=True)
    deployment.drop("first.txt", "first note about kayaks")
    assert deployment.tick()  # startup: a full scan
    deployment.drop("second.txt", "second note about canoes")
    tick_until(deployment, bool)
    (deployment.inbox / "second.txt").rename(deployment.inbox / "renamed.txt")
    tick_until(deployment, lambda requests: "renamed.txt" in deployment.store.ledger.documents_of("docs"))
    # changes made while nothing watched: a new process (no watcher yet) starts with a full scan
    reset_process_caches()
    (deployment.inbox / "first.txt").unlink()
    deployment.drop("offline.txt", "written while the daemon was down")
    deployment.tick()
    assert set(deployment.store.ledger.documents_of("docs")) == {"renamed.txt", "offline.txt"}
    # an event the journal missed is found by the periodic reconcile
    cursor = json.loads(deployment.cursors["watch_docs"])
    watcher_blind = deployment.inbox / "blind.txt"
    watcher_blind.write_text("the journal never heard of this")
    watcher, started = watcher_for(deployment.manifest.sources[0])
    assert not started
    watcher.journal.drain()  # lose the event, as an inotify overflow would
    deployment.cursors["watch_docs"] = json.dumps({**cursor, "reconciled_at": 0})
    deployment.tick()
    assert "blind.txt" in deployment.store.ledger.documents_of("docs")


def rebuilds_requested(deployment) -> list[str]:
    context = build_sensor_context(instance=deployment.instance, resources=deployment.resources)
    result = deployment.defs.resolve_sensor_def("index_freshness")(context)
    return sorted(request.partition_key for request in result.run_requests or [])


def test_rebuild_policy_follows_the_stale_fraction(deployment):
    for i in range(20):
        deployment.drop(f"n{i:02d}.txt", f"note number {i} about word{i}")
    deployment.sync(rebuild=False)
    assert rebuilds_requested(deployment) == ["0", "1"]  # nothing indexed yet
    for shard in range(2):
        deployment.rebuild(shard)
    assert rebuilds_requested(deployment) == []
    (deployment.inbox / "n00.txt").unlink()
    deployment.sync(rebuild=False)
    stale = [row["stale_fraction"] for row in deployment.stats()["shards"]]
    assert max(stale) < 0.10 and rebuilds_requested(deployment) == []
    for i in range(1, 8):
        (deployment.inbox / f"n{i:02d}.txt").unlink()
    deployment.sync(rebuild=False)
    over = [str(row["shard"]) for row in deployment.stats()["shards"] if row["stale_fraction"] >= 0.10]
    assert over and rebuilds_requested(deployment) == over


def test_searches_during_rebuilds_stay_correct(deployment):
    topics = ["kayak", "volcano", "violin", "penguin", "sourdough", "falcon"]
    for topic in topics:
        deployment.drop(f"{topic}.txt", f"{topic} " * 10)
    deployment.sync()
    failures, wrong, overlapped, stop = [], [], [], threading.Event()

    def versions() -> tuple:
        return tuple(deployment.index.current(shard).version for shard in range(2))

    def search_forever():
        try:
            while not stop.is_set():
                for topic in topics:
                    before = versions()
                    found = paths_found(deployment, topic, k=1)
                    if found != [f"{topic}.txt"]:
                        wrong.append((topic, found))
                    if versions() != before:
                        overlapped.append(topic)  # an index swap landed during this search
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    searchers = [threading.Thread(target=search_forever) for _ in range(2)]
    for thread in searchers:
        thread.start()
    try:
        for _ in range(4):
            for shard in range(2):
                assert deployment.rebuild(shard).success
    finally:
        stop.set()
        for thread in searchers:
            thread.join()
    assert failures == [] and wrong == []
    assert len(overlapped) >= 1, "no search overlapped an index swap, so the test proved nothing"


def test_corrupt_or_deleted_index_is_detected_and_repaired(deployment):
    for topic in ["kayak", "volcano", "violin"]:
        deployment.drop(f"{topic}.txt", f"{topic} " * 10)
    deployment.sync()
    shard = next(s for s in range(2) if deployment.index.current(s) and deployment.index.current(s).items)
    meta = deployment.index.current(shard)
    path = deployment.index.shard_dir(shard) / meta.index_file
    corrupted = bytearray(path.read_bytes())
    corrupted[64] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    check = deployment.check()
    assert not check.passed and check.severity.value == "ERROR" and "checksum" in check.description
    path.unlink()
    assert paths_found(deployment, "volcano", k=1) == ["volcano.txt"]  # search falls back to an exact scan
    assert str(shard) in rebuilds_requested(deployment)
    deployment.rebuild(shard)
    assert deployment.check().passed


def test_removing_a_source_from_grace_yaml_removes_its_documents(tmp_path):
    notes = "  - {name: notes, path: notes, origin: notes}\n"
    both = Deployment(tmp_path, None, HashingEmbedderResource(), shards=2, extra_sources=notes)
    both.drop("kept.txt", "a note about harbours")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "dropped.txt").write_text("a note about harbour cranes")
    both.sync()
    assert sorted(hit.path for hit in both.search("harbour", k=5)) == ["dropped.txt", "kept.txt"]
    one = Deployment(tmp_path, None, HashingEmbedderResource(), shards=2)  # grace.yaml without notes
    one.sync(rebuild=False)
    assert [hit.path for hit in one.search("harbour", k=5)] == ["kept.txt"]
    assert (tmp_path / "notes" / "dropped.txt").exists(), "the user's file is untouched"


def test_real_observer_reports_paths_without_rescans(tmp_path):
    source = SourceConfig(name="docs", path=tmp_path / "inbox", patterns=["**/*.txt"])
    source.path.mkdir()  # the watcher never makes it (test_held_deletes.py)
    watcher = FolderWatcher(source)
    try:
        (source.path / "top.txt").write_text("new at the top")
        (source.path / "sub").mkdir()
        (source.path / "sub" / "inner.txt").write_text("new in a new folder")
        (source.path / "ignored.bin").write_bytes(b"\x00")
        deadline, seen = time.monotonic() + 10, Dirty()
        while time.monotonic() < deadline and not {"top.txt", "sub/inner.txt"} <= seen.files:
            time.sleep(0.3)
            drained = watcher.journal.drain()
            assert drained is not None, "new files must not force a full scan"
            seen.files |= drained.files
            seen.folders |= drained.folders
        assert seen.files == {"top.txt", "sub/inner.txt"} and seen.folders == {"sub"}
    finally:
        watcher.stop()

"""The store on SQLite and on the real PostgreSQL server, through the same code."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from grace.resources.schema import NewChunk, ObservedFile, chunks, staged_chunks
from grace.resources.store import Store
from tests.harness import encrypting_store


@pytest.fixture
def store(store_url):
    store = encrypting_store(store_url)
    yield store
    store.dispose()


def observed(path: str, digest: str, size: int = 10) -> ObservedFile:
    return ObservedFile(path, size, 1, digest)


def chunk(ordinal: int, text: str) -> NewChunk:
    return NewChunk(ordinal, f"h-{text}", text, 3)


def add_active(store: Store, path: str, texts: list[str]) -> str:
    store.record_scan("docs", [observed(path, f"hash-{path}")], [], [], [])
    document_id = store.documents_of("docs")[path].id
    store.set_document_text(document_id, f"hash-{path}", " ".join(texts))
    store.replace_chunks(document_id, f"hash-{path}", [chunk(i, t) for i, t in enumerate(texts)], "settings")
    return document_id


def test_scan_changes_feed_the_sensor_cursor(store):
    store.record_scan("docs", [observed("a.txt", "h1", 5), observed("b.txt", "h2", 7)], [], [], [])
    pending = store.pending_changes("docs", 0, shards=1)
    assert pending.bytes_by_shard == {0: 12} and pending.last_change_id >= 2
    assert store.pending_changes("docs", pending.last_change_id, 1).bytes_by_shard == {}
    store.forget_changes("docs", pending.last_change_id)
    store.record_scan("docs", [observed("a.txt", "h3", 6)], [], [], [])
    newer = store.pending_changes("docs", pending.last_change_id, 1)
    assert newer.last_change_id > pending.last_change_id and newer.bytes_by_shard == {0: 6}


def test_documents_are_processed_until_their_hash_matches(store):
    store.record_scan("docs", [observed("a.txt", "h1")], [], [], [])
    [row] = store.unprocessed_documents(0, 1)
    store.set_document_text(row.id, "h1", "hello")
    assert store.unprocessed_documents(0, 1) == []
    store.record_scan("docs", [observed("a.txt", "h2")], [], [], [])
    assert [r.path for r in store.unprocessed_documents(0, 1)] == ["a.txt"]
    store.quarantine_document(row.id, "h2", "bad bytes")
    assert store.quarantined() == [("docs", "a.txt", "bad bytes")]
    assert store.unprocessed_documents(0, 1) == []


def test_a_deletion_recorded_during_a_read_wins(store):
    store.record_scan("docs", [observed("a.txt", "h1")], [], [], [])
    [row] = store.unprocessed_documents(0, 1)
    store.record_scan("docs", [], [], [], ["a.txt"])
    store.set_document_text(row.id, "h1", "late text")
    [again] = store.unprocessed_documents(0, 1)
    assert again.status == "deleted"
    store.purge_document(row.id)
    assert store.documents_of("docs") == {} and store.unprocessed_documents(0, 1) == []


def test_replacing_chunks_keeps_unchanged_rows(store):
    document_id = add_active(store, "a.txt", ["one", "two", "three"])
    before = store.chunk_hits(list(range(1, 10)))
    assert len(before) == 3
    ids_by_text = {hit.text: hit.chunk_id for hit in before.values()}
    assert max(ids_by_text.values()) == ids_by_text["three"]
    # "three" holds the highest id and goes: an id counter that reuses ids would hand it to "four".
    new_chunks = [chunk(0, "two"), chunk(1, "four"), chunk(2, "one")]
    inserted = store.replace_chunks(document_id, "hash-a.txt", new_chunks, "settings")
    after = {hit.text: hit for hit in store.chunk_hits(list(range(1, 10))).values()}
    assert inserted == 1 and set(after) == {"two", "four", "one"}
    assert after["two"].chunk_id == ids_by_text["two"] and after["two"].ordinal == 0
    assert after["one"].chunk_id == ids_by_text["one"] and after["one"].ordinal == 2
    assert after["four"].chunk_id > ids_by_text["three"]  # ids are never reused


def test_two_chunks_with_one_ordinal_are_refused(store):
    document_id = add_active(store, "a.txt", ["one"])
    with pytest.raises(IntegrityError):
        with store.writer.begin() as connection:
            connection.execute(
                insert(chunks).values(document_id=document_id, ordinal=0, chunk_hash="h-x", text="x", token_count=1)
            )


def test_concurrent_replacements_of_one_document_serialize(store):
    document_id = add_active(store, "a.txt", ["start"])
    rounds = 40

    def chunk_list(name: str, round_number: int) -> list[NewChunk]:
        # Fresh texts every round, so each call inserts, deletes and moves rows whoever went last.
        texts = ["x", f"{name}{round_number}", "y"] if name == "left" else ["y", f"{name}{round_number}", "x", "z"]
        return [chunk(i, text) for i, text in enumerate(texts)]

    barrier = threading.Barrier(2)
    windows: dict[str, list[tuple[float, float]]] = {"left": [], "right": []}
    errors: list[BaseException] = []

    def replace_repeatedly(name: str) -> None:
        try:
            for round_number in range(rounds):
                barrier.wait(timeout=30)
                started = time.perf_counter()
                store.replace_chunks(document_id, "hash-a.txt", chunk_list(name, round_number), "settings")
                windows[name].append((started, time.perf_counter()))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=replace_repeatedly, args=(name,)) for name in windows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    overlapping = sum(
        left_start < right_end and right_start < left_end
        for (left_start, left_end), (right_start, right_end) in zip(windows["left"], windows["right"])
    )
    # Overlapping calls are what the locks are for: without them these rounds fail on both backends.
    assert overlapping >= 3, "the two writers must really have been inside replace_chunks at once"
    with store.engine.connect() as connection:
        doubled = connection.execute(
            select(chunks.c.document_id, chunks.c.ordinal).group_by(chunks.c.document_id, chunks.c.ordinal)
            .having(func.count() > 1)
        ).all()
        final = connection.execute(
            select(chunks.c.chunk_hash).where(chunks.c.document_id == document_id).order_by(chunks.c.ordinal)
        ).scalars().all()
    assert doubled == []
    assert final in ([c.chunk_hash for c in chunk_list(name, rounds - 1)] for name in windows)


def test_embeddings_are_shared_by_hash_and_saved_idempotently(store):
    add_active(store, "a.txt", ["same", "other"])
    add_active(store, "b.txt", ["same"])
    todo = store.chunks_to_embed(0, 1, "m@1")
    assert sorted(text for _h, text in todo) == ["other", "same"]  # one embedding per distinct text
    vectors = np.eye(2, 4, dtype=np.float32)
    store.save_embeddings("m@1", [h for h, _t in todo], vectors)
    store.save_embeddings("m@1", [h for h, _t in todo], vectors)  # a repeated run changes nothing
    assert store.chunks_to_embed(0, 1, "m@1") == [] and len(store.chunks_to_embed(0, 1, "m@2")) == 2
    ids = store.embedded_chunk_ids(0, 1, "m@1")
    assert len(ids) == 3
    found_ids, found = store.vectors_of(ids, "m@1")
    assert list(found_ids) == list(ids) and found.shape == (3, 4) and found.dtype == np.float32


def test_rename_keeps_the_document_and_a_new_file_at_the_old_path_is_new(store):
    document_id = add_active(store, "old.txt", ["text"])
    store.record_scan("docs", [], [observed("new.txt", "hash-old.txt")], [("old.txt", "new.txt")], [])
    assert store.documents_of("docs")["new.txt"].id == document_id
    store.record_scan("docs", [observed("old.txt", "other")], [], [], [])
    documents = store.documents_of("docs")
    assert documents["old.txt"].id != document_id and documents["new.txt"].id == document_id


def test_shards_partition_the_documents(store):
    for i in range(20):
        add_active(store, f"f{i}.txt", [f"text {i}"])
        store.save_embeddings("m@1", [f"h-text {i}"], np.ones((1, 4), dtype=np.float32))
    per_shard = [store.embedded_chunk_ids(shard, 3, "m@1") for shard in range(3)]
    assert sum(len(ids) for ids in per_shard) == 20
    assert len(set(np.concatenate(per_shard))) == 20
    assert all(len(ids) for ids in per_shard)  # 20 documents spread over all 3 shards
    counts = store.shard_counts(0, 3)
    assert counts["documents_active"] == len(per_shard[0]) == counts["chunks"]


def test_hostile_paths_and_text_round_trip(store):
    path = "wéird/na me'; DROP TABLE documents;--\n.txt"
    document_id = add_active(store, path, ["emoji 🙂 and NUL-free \\x00 text", "quote ' and \" "])
    assert path in store.documents_of("docs")
    hits = store.chunk_hits(list(range(1, 5)))
    assert {hit.document_id for hit in hits.values()} == {document_id}


def test_staged_chunks_go_live_only_once_all_are_embedded(store):
    document_id = add_active(store, "a.txt", ["keep", "old"])
    store.save_embeddings("m@1", ["h-keep", "h-old"], np.ones((2, 4), dtype=np.float32))
    kept_id = {hit.text: hit.chunk_id for hit in store.chunk_hits(list(range(1, 10))).values()}["keep"]
    edit = [chunk(0, "new"), chunk(1, "keep")]
    assert store.stage_chunks(document_id, "hash-a.txt", edit, "settings", "m@1") is False
    assert sorted(hit.text for hit in store.chunk_hits(list(range(1, 10))).values()) == ["keep", "old"]
    assert store.shards_needing_ingest("docs", 1, "settings", "m@1") == {0}
    assert store.chunks_to_embed(0, 1, "m@1") == [("h-new", "new")]
    assert store.publish_staged(0, 1, "m@1") == 0  # "new" has no vector yet
    store.save_embeddings("m@1", ["h-new"], np.ones((1, 4), dtype=np.float32))
    assert store.publish_staged(0, 1, "m@1") == 1
    live = {hit.text: hit for hit in store.chunk_hits(list(range(1, 10))).values()}
    assert set(live) == {"new", "keep"} and live["keep"].chunk_id == kept_id and live["keep"].ordinal == 1
    assert store.shards_needing_ingest("docs", 1, "settings", "m@1") == set()
    # Every vector cached already: the edit goes live in the chunks step itself.
    assert store.stage_chunks(document_id, "hash-a.txt", [chunk(0, "old")], "settings", "m@1") is True
    assert [hit.text for hit in store.chunk_hits(list(range(1, 10))).values()] == ["old"]


def test_stages_of_changed_quarantined_or_purged_documents_are_dropped(store):
    first = add_active(store, "a.txt", ["a"])
    second = add_active(store, "b.txt", ["b"])
    for document_id in (first, second):
        store.stage_chunks(document_id, f"hash-{'a' if document_id == first else 'b'}.txt", [chunk(0, "z")], "s", "m")
    store.record_scan("docs", [observed("a.txt", "edited")], [], [], [])
    store.set_document_text(first, "edited", "edited text")  # the stage of a.txt is now stale
    assert store.discard_stale_stages(0, 1, "s") == 1
    assert store.publish_staged(0, 1, "m") == 0
    store.quarantine_document(second, "hash-b.txt", "bad bytes")
    store.stage_chunks(first, "edited", [chunk(0, "y")], "s", "m")
    store.purge_document(first)
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(staged_chunks)).scalar_one() == 0


@pytest.mark.parametrize("race", ["touched", "moved"])
def test_a_row_purged_between_diff_and_record_scan_comes_back_pending(tmp_path, store_url, race):
    from grace.sensors.scan import diff_folder, list_files
    from tests.fakes import HashingEmbedderResource
    from tests.harness import Deployment

    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource())
    path = deployment.drop("note.txt", "Walruses nap on floating ice in the arctic summer.")
    deployment.sync()
    source, store = deployment.manifest.sources[0], deployment.store
    if race == "moved":
        path.rename(deployment.inbox / "renamed.txt")
    else:
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    found = diff_folder(source, store.documents_of("docs"), list_files(source.path, source.patterns))
    assert (len(found.moved), len(found.touched)) == ((1, 1) if race == "moved" else (0, 1))
    store.purge_document(store.documents_of("docs")["note.txt"].id)  # an ingest run got there first
    events = store.record_scan("docs", found.changed, found.touched, found.moved, found.deleted)
    expected_path = "renamed.txt" if race == "moved" else "note.txt"
    row = store.documents_of("docs")[expected_path]
    assert events == 1 and row.status == "pending"
    assert deployment.sync() != []
    assert [hit.path for hit in deployment.search("walruses arctic ice", k=1)] == [expected_path]


def test_a_deletion_of_a_row_already_purged_is_a_no_op(store):
    document_id = add_active(store, "a.txt", ["text"])
    store.purge_document(document_id)  # an ingest run removed it after the scan listed it
    assert store.record_scan("docs", [], [], [], ["a.txt"]) == 0
    assert store.documents_of("docs") == {}

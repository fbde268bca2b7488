"""The store on SQLite and on the real PostgreSQL server, through the same code."""

from __future__ import annotations

import os
import random
import threading
import time

import numpy as np
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from grace.resources.db.chunk_rows import NewChunk
from grace.resources.db.schema import ObservedFile, chunks, documents, staged_chunks
from grace.resources.store.documents import DocumentRead
from grace.resources.store.store import Store
from tests.helpers.harness import encrypting_store
from tests.helpers.store_writes import (
    purge_document,
    quarantine_document,
    replace_chunks,
    set_document_text,
    stage_chunks,
    unprocessed_documents,
)


@pytest.fixture
def store(store_url):
    store = encrypting_store(store_url)
    yield store
    store.dispose()


def observed(path: str, digest: str, size: int = 10) -> ObservedFile:
    return ObservedFile(path, size, 1, digest)


def chunk(ordinal: int, text: str) -> NewChunk:
    return NewChunk(ordinal, f"h-{text}", text, 3)


def flat(pages) -> list:
    """The items of every page, in order."""
    return [item for page in pages for item in page]


def add_active(store: Store, path: str, texts: list[str]) -> str:
    store.ledger.record_scan("docs", [observed(path, f"hash-{path}")], [], [], [], shards=1)
    document_id = store.ledger.documents_of("docs")[path].id
    set_document_text(store, document_id, f"hash-{path}", " ".join(texts))
    replace_chunks(store, document_id, f"hash-{path}", [chunk(i, t) for i, t in enumerate(texts)], "settings")
    return document_id


def test_scan_changes_feed_the_sensor_cursor(store):
    store.ledger.record_scan("docs", [observed("a.txt", "h1", 5), observed("b.txt", "h2", 7)], [], [], [], shards=1)
    pending = store.ledger.pending_changes("docs", 0, shards=1)
    assert pending.bytes_by_shard == {0: 12} and pending.last_change_id >= 2
    assert store.ledger.pending_changes("docs", pending.last_change_id, 1).bytes_by_shard == {}
    store.ledger.forget_changes("docs", pending.last_change_id)
    store.ledger.record_scan("docs", [observed("a.txt", "h3", 6)], [], [], [], shards=1)
    newer = store.ledger.pending_changes("docs", pending.last_change_id, 1)
    assert newer.last_change_id > pending.last_change_id and newer.bytes_by_shard == {0: 6}


def test_documents_are_processed_until_their_hash_matches(store):
    store.ledger.record_scan("docs", [observed("a.txt", "h1")], [], [], [], shards=1)
    [row] = unprocessed_documents(store, 0, 1)
    set_document_text(store, row.id, "h1", "hello")
    assert unprocessed_documents(store, 0, 1) == []
    store.ledger.record_scan("docs", [observed("a.txt", "h2")], [], [], [], shards=1)
    assert [r.path for r in unprocessed_documents(store, 0, 1)] == ["a.txt"]
    quarantine_document(store, row.id, "h2", "bad bytes")
    assert store.documents.quarantined() == [("docs", "a.txt", "bad bytes")]
    assert unprocessed_documents(store, 0, 1) == []


def test_a_deletion_recorded_during_a_read_wins(store):
    store.ledger.record_scan("docs", [observed("a.txt", "h1")], [], [], [], shards=1)
    [row] = unprocessed_documents(store, 0, 1)
    store.ledger.record_scan("docs", [], [], [], ["a.txt"], shards=1)
    set_document_text(store, row.id, "h1", "late text")
    [again] = unprocessed_documents(store, 0, 1)
    assert again.status == "deleted"
    purge_document(store, row.id)
    assert store.ledger.documents_of("docs") == {} and unprocessed_documents(store, 0, 1) == []


def test_a_file_that_changes_again_while_read_stays_pending(store):
    store.ledger.record_scan("docs", [ObservedFile("a.txt", 5, 1, "unread:5:1")], [], [], [], shards=1)
    [row] = store.documents.documents_to_read(0, 1)
    store.ledger.record_scan("docs", [ObservedFile("a.txt", 6, 2, "unread:6:2")], [], [], [], shards=1)  # seen again
    store.documents.record_reads([DocumentRead(row.id, row.disk_hash, "h1", text="first words")])
    [again] = store.documents.documents_to_read(0, 1)
    assert (again.disk_hash, again.processed_hash, again.status) == ("unread:6:2", "h1", "active")
    store.documents.record_reads([DocumentRead(again.id, again.disk_hash, "h2", text="second words")])
    assert store.documents.documents_to_read(0, 1) == []
    assert store.ledger.documents_of("docs")["a.txt"].disk_hash == "h2"


def test_a_touched_file_keeps_its_text_and_chunks(store):
    document_id = add_active(store, "a.txt", ["one", "two"])
    chunk_ids = sorted(store.texts.chunk_hits(list(range(1, 10))))
    store.ledger.record_scan("docs", [ObservedFile("a.txt", 10, 2, "unread:10:2")], [], [], [], shards=1)
    [row] = store.documents.documents_to_read(0, 1)
    reads = store.documents.recording_reads()
    reads.confirm(row, "hash-a.txt")
    reads.flush()
    assert store.documents.documents_to_read(0, 1) == []
    with store.engine.connect() as connection:
        hashes = connection.execute(
            select(
                documents.c.disk_hash, documents.c.processed_hash, documents.c.chunked_hash, documents.c.status
            ).where(documents.c.id == document_id)
        ).one()
    assert tuple(hashes) == ("hash-a.txt", "hash-a.txt", "hash-a.txt", "active")
    assert sorted(store.texts.chunk_hits(list(range(1, 10)))) == chunk_ids


def test_a_deletion_recorded_during_a_batch_of_reads_wins(store):
    files = [observed("a.txt", "unread:a"), observed("b.txt", "unread:b")]
    store.ledger.record_scan("docs", files, [], [], [], shards=1)
    rows = store.documents.documents_to_read(0, 1)
    store.ledger.record_scan("docs", [], [], [], ["a.txt"], shards=1)
    reads = store.documents.recording_reads()
    for row in rows:
        reads.activate(row, f"h-{row.path}", "PlainTextReader/1", f"text of {row.path}")
    reads.flush()
    assert [(row.path, row.status) for row in store.documents.documents_to_read(0, 1)] == [("a.txt", "deleted")]
    store.ledger.record_scan("docs", [observed("b.txt", "unread:b2")], [], [], [], shards=1)
    store.ledger.record_scan("docs", [], [], [], ["b.txt"], shards=1)
    store.ledger.record_scan("docs", [observed("b.txt", "unread:b3")], [], [], [], shards=1)  # back before the purge
    assert store.documents.purge_deleted([row.id for row in rows]) == 1
    assert list(store.ledger.documents_of("docs")) == ["b.txt"]


def test_scans_and_batches_of_reads_on_the_same_rows_never_deadlock(store):
    paths = [f"p{n:03d}.txt" for n in range(200)]
    store.ledger.record_scan("docs", [ObservedFile(path, 1, 1, "unread:1:1") for path in paths], [], [], [], shards=1)
    rows = store.documents.documents_to_read(0, 1)
    shuffled = random.Random(7)
    errors: list[BaseException] = []

    def scanning() -> None:
        for round_number in range(15):
            seen = [ObservedFile(path, 2 + round_number, 1, f"unread:{round_number}") for path in paths]
            store.ledger.record_scan("docs", shuffled.sample(seen, 150), [], [], [], shards=1)

    def reading() -> None:
        for round_number in range(15):
            batch = shuffled.sample(rows, 150)  # quarantines and texts interleaved: no order in common
            store.documents.record_reads(
                [
                    DocumentRead(row.id, row.disk_hash, f"h{round_number}", text=f"text {n}")
                    if n % 2
                    else DocumentRead(row.id, row.disk_hash, f"h{round_number}", problem="binary content")
                    for n, row in enumerate(batch)
                ]
            )

    def recording(work) -> None:
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=recording, args=(work,)) for work in (scanning, reading)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_replacing_chunks_keeps_unchanged_rows(store):
    document_id = add_active(store, "a.txt", ["one", "two", "three"])
    before = store.texts.chunk_hits(list(range(1, 10)))
    assert len(before) == 3
    ids_by_text = {hit.text: hit.chunk_id for hit in before.values()}
    assert max(ids_by_text.values()) == ids_by_text["three"]
    # "three" holds the highest id and goes: an id counter that reuses ids would hand it to "four".
    new_chunks = [chunk(0, "two"), chunk(1, "four"), chunk(2, "one")]
    inserted = replace_chunks(store, document_id, "hash-a.txt", new_chunks, "settings")
    after = {hit.text: hit for hit in store.texts.chunk_hits(list(range(1, 10))).values()}
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
                replace_chunks(store, document_id, "hash-a.txt", chunk_list(name, round_number), "settings")
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
            select(chunks.c.document_id, chunks.c.ordinal)
            .group_by(chunks.c.document_id, chunks.c.ordinal)
            .having(func.count() > 1)
        ).all()
        final = (
            connection.execute(
                select(chunks.c.chunk_hash).where(chunks.c.document_id == document_id).order_by(chunks.c.ordinal)
            )
            .scalars()
            .all()
        )
    assert doubled == []
    assert final in ([c.chunk_hash for c in chunk_list(name, rounds - 1)] for name in windows)


def test_embeddings_are_shared_by_hash_and_saved_idempotently(store):
    add_active(store, "a.txt", ["same", "other"])
    add_active(store, "b.txt", ["same"])
    todo = flat(store.texts.chunks_to_embed(0, 1, "m@1"))
    assert sorted(text for _h, text in todo) == ["other", "same"]  # one embedding per distinct text
    vectors = np.eye(2, 4, dtype=np.float32)
    store.embeddings.save("m@1", [h for h, _t in todo], vectors)
    store.embeddings.save("m@1", [h for h, _t in todo], vectors)  # a repeated run changes nothing
    assert flat(store.texts.chunks_to_embed(0, 1, "m@1")) == []
    assert len(flat(store.texts.chunks_to_embed(0, 1, "m@2"))) == 2
    ids = store.index_delta.embedded_chunk_ids(0, 1, "m@1")
    assert len(ids) == 3
    found_ids, found = store.embeddings.vectors_of(ids, "m@1")
    assert list(found_ids) == list(ids) and found.shape == (3, 4) and found.dtype == np.float32


def test_rename_keeps_the_document_and_a_new_file_at_the_old_path_is_new(store):
    document_id = add_active(store, "old.txt", ["text"])
    store.ledger.record_scan("docs", [], [observed("new.txt", "hash-old.txt")], [("old.txt", "new.txt")], [], shards=1)
    assert store.ledger.documents_of("docs")["new.txt"].id == document_id
    store.ledger.record_scan("docs", [observed("old.txt", "other")], [], [], [], shards=1)
    documents = store.ledger.documents_of("docs")
    assert documents["old.txt"].id != document_id and documents["new.txt"].id == document_id


def test_shards_partition_the_documents(store):
    for i in range(20):
        add_active(store, f"f{i}.txt", [f"text {i}"])
        store.embeddings.save("m@1", [f"h-text {i}"], np.ones((1, 4), dtype=np.float32))
    per_shard = [store.index_delta.embedded_chunk_ids(shard, 3, "m@1") for shard in range(3)]
    assert sum(len(ids) for ids in per_shard) == 20
    assert len(set(np.concatenate(per_shard))) == 20
    assert all(len(ids) for ids in per_shard)  # 20 documents spread over all 3 shards
    counts = store.documents.shard_counts(0, 3)
    assert counts["documents_active"] == len(per_shard[0]) == counts["chunks"]


def test_hostile_paths_and_text_round_trip(store):
    path = "wéird/na me'; DROP TABLE documents;--\n.txt"
    document_id = add_active(store, path, ["emoji 🙂 and NUL-free \\x00 text", "quote ' and \" "])
    assert path in store.ledger.documents_of("docs")
    hits = store.texts.chunk_hits(list(range(1, 5)))
    assert {hit.document_id for hit in hits.values()} == {document_id}


def test_staged_chunks_go_live_only_once_all_are_embedded(store):
    document_id = add_active(store, "a.txt", ["keep", "old"])
    store.embeddings.save("m@1", ["h-keep", "h-old"], np.ones((2, 4), dtype=np.float32))
    kept_id = {hit.text: hit.chunk_id for hit in store.texts.chunk_hits(list(range(1, 10))).values()}["keep"]
    edit = [chunk(0, "new"), chunk(1, "keep")]
    assert stage_chunks(store, document_id, "hash-a.txt", edit, "settings", "m@1") is False
    assert sorted(hit.text for hit in store.texts.chunk_hits(list(range(1, 10))).values()) == ["keep", "old"]
    assert store.ledger.shards_needing_ingest("docs", 1, "settings", "m@1") == {0}
    assert flat(store.texts.chunks_to_embed(0, 1, "m@1")) == [("h-new", "new")]
    assert store.chunks.publish_staged(0, 1, "m@1") == 0  # "new" has no vector yet
    store.embeddings.save("m@1", ["h-new"], np.ones((1, 4), dtype=np.float32))
    assert store.chunks.publish_staged(0, 1, "m@1") == 1
    live = {hit.text: hit for hit in store.texts.chunk_hits(list(range(1, 10))).values()}
    assert set(live) == {"new", "keep"} and live["keep"].chunk_id == kept_id and live["keep"].ordinal == 1
    assert store.ledger.shards_needing_ingest("docs", 1, "settings", "m@1") == set()
    # Every vector cached already: the edit goes live in the chunks step itself.
    assert stage_chunks(store, document_id, "hash-a.txt", [chunk(0, "old")], "settings", "m@1") is True
    assert [hit.text for hit in store.texts.chunk_hits(list(range(1, 10))).values()] == ["old"]


def test_stages_of_changed_quarantined_or_purged_documents_are_dropped(store):
    first = add_active(store, "a.txt", ["a"])
    second = add_active(store, "b.txt", ["b"])
    for document_id in (first, second):
        stage_chunks(store, document_id, f"hash-{'a' if document_id == first else 'b'}.txt", [chunk(0, "z")], "s", "m")
    store.ledger.record_scan("docs", [observed("a.txt", "edited")], [], [], [], shards=1)
    set_document_text(store, first, "edited", "edited text")  # the stage of a.txt is now stale
    assert store.chunks.discard_stale_stages(0, 1, "s") == 1
    assert store.chunks.publish_staged(0, 1, "m") == 0
    quarantine_document(store, second, "hash-b.txt", "bad bytes")
    stage_chunks(store, first, "edited", [chunk(0, "y")], "s", "m")
    purge_document(store, first)
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(staged_chunks)).scalar_one() == 0


@pytest.mark.parametrize("race", ["changed", "moved"])
def test_a_row_purged_between_diff_and_record_scan_comes_back_pending(tmp_path, store_url, race):
    from grace.sensors.scan import diff_folder, list_files
    from tests.helpers.fakes import HashingEmbedderResource
    from tests.helpers.harness import Deployment

    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource())
    path = deployment.drop("note.txt", "Walruses nap on floating ice in the arctic summer.")
    deployment.sync()
    source, store = deployment.manifest.sources[0], deployment.store
    if race == "moved":
        path.rename(deployment.inbox / "renamed.txt")
    else:
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    found = diff_folder(source, store.ledger.documents_of("docs"), list_files(source.path, source.patterns))
    assert (len(found.moved), len(found.changed)) == ((1, 0) if race == "moved" else (0, 1))
    purge_document(store, store.ledger.documents_of("docs")["note.txt"].id)  # an ingest run got there first
    events = store.ledger.record_scan("docs", found.changed, found.touched, found.moved, found.deleted, shards=1)
    expected_path = "renamed.txt" if race == "moved" else "note.txt"
    row = store.ledger.documents_of("docs")[expected_path]
    assert events == 1 and row.status == "pending"
    assert deployment.sync() != []
    assert [hit.path for hit in deployment.search("walruses arctic ice", k=1)] == [expected_path]


def test_a_deletion_of_a_row_already_purged_is_a_no_op(store):
    document_id = add_active(store, "a.txt", ["text"])
    purge_document(store, document_id)  # an ingest run removed it after the scan listed it
    assert store.ledger.record_scan("docs", [], [], [], ["a.txt"], shards=1) == 0
    assert store.ledger.documents_of("docs") == {}

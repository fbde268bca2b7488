"""The store on SQLite and on the real PostgreSQL server, through the same code."""

from __future__ import annotations

import numpy as np
import pytest

from grace.resources.schema import NewChunk, ObservedFile
from grace.resources.store import Store


@pytest.fixture
def store(store_url):
    store = Store(store_url)
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
    new_chunks = [chunk(0, "two"), chunk(1, "four"), chunk(2, "three")]
    inserted = store.replace_chunks(document_id, "hash-a.txt", new_chunks, "settings")
    after = {hit.text: hit for hit in store.chunk_hits(list(range(1, 10))).values()}
    assert inserted == 1 and set(after) == {"two", "four", "three"}
    assert after["two"].chunk_id == ids_by_text["two"] and after["two"].ordinal == 0
    assert after["four"].chunk_id not in ids_by_text.values()  # ids are never reused


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

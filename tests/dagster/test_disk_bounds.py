"""Disk follows the corpus: vectors no chunk needs are deleted, and a document's text is stored once."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import numpy as np
import pytest
from dagster import AssetKey
from sqlalchemy import select

from grace.resources.db.chunk_rows import NewChunk
from grace.resources.db.schema import ObservedFile, documents, embeddings, utc_now
from grace.resources.store.store import Store
from tests.helpers import harness
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment, encrypting_store
from tests.helpers.store_writes import replace_chunks, set_document_text, stage_chunks

LATER = timedelta(hours=1)  # past the grace period of every vector saved by the test
MANIFEST_TEXT = harness.manifest_text


@pytest.fixture
def store(store_url):
    store = encrypting_store(store_url)
    yield store
    store.dispose()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def add_document(store: Store, path: str, texts: list[str]) -> str:
    """An active document whose live chunks hold texts; returns its id."""
    store.ledger.record_scan("docs", [ObservedFile(path, 10, 1, f"hash-{path}")], [], [], [], shards=1)
    document_id = store.ledger.documents_of("docs")[path].id
    set_document_text(store, document_id, f"hash-{path}", " ".join(texts))
    new_chunks = [NewChunk(i, sha(text), text, 3) for i, text in enumerate(texts)]
    replace_chunks(store, document_id, f"hash-{path}", new_chunks, "s")
    return document_id


def save(store: Store, model_id: str, texts: list[str]) -> None:
    store.embeddings.save(model_id, [sha(text) for text in texts], np.ones((len(texts), 4), dtype=np.float32))


def vectors(store: Store) -> set[tuple[str, str]]:
    with store.engine.connect() as connection:
        return set(connection.execute(select(embeddings.c.model_id, embeddings.c.chunk_hash)).all())


def test_vectors_no_chunk_references_go_and_referenced_ones_stay_for_every_model(store):
    document_id = add_document(store, "a.txt", ["kept live", "edited away"])
    save(store, "m@1", ["kept live", "edited away", "staged next", "never used"])
    save(store, "m@old", ["kept live", "never used"])
    edit = [NewChunk(0, sha("kept live"), "kept live", 3), NewChunk(1, sha("staged next"), "staged next", 3)]
    assert stage_chunks(store, document_id, "hash-a.txt", edit, "s", "m@2") is False  # m@2 lacks them: staged
    replace_chunks(store, document_id, "hash-a.txt", [NewChunk(0, sha("kept live"), "kept live", 3)], "s")
    stage_chunks(store, document_id, "hash-a.txt", edit, "s", "m@2")  # replace dropped the stage: stage again
    assert store.embeddings.delete_unreferenced() == 0, "every vector is younger than the grace period"
    assert store.embeddings.delete_unreferenced(now=utc_now() + LATER) == 3
    assert vectors(store) == {
        ("m@1", sha("kept live")),
        ("m@1", sha("staged next")),  # only a staged chunk has it: it is about to go live
        ("m@old", sha("kept live")),
    }
    assert store.embeddings.delete_unreferenced(now=utc_now() + LATER) == 0


def test_parts_of_the_hash_space_together_sweep_every_orphan_once(store):
    add_document(store, "a.txt", [f"live {n}" for n in range(5)])
    orphans = [f"orphan {n}" for n in range(40)]
    save(store, "m@1", [f"live {n}" for n in range(5)] + orphans)
    later = utc_now() + LATER
    swept = [store.embeddings.delete_unreferenced(part, 4, batch_size=3, now=later) for part in range(4)]
    assert sum(swept) == 40 and all(swept), f"each part holds some of 40 random hashes: {swept}"
    assert vectors(store) == {("m@1", sha(f"live {n}")) for n in range(5)}
    with pytest.raises(ValueError, match="part must be in"):
        store.embeddings.delete_unreferenced(4, 4)


def test_a_text_read_again_for_chunks_it_already_has_is_released(store):
    document_id = add_document(store, "a.txt", ["one text"])
    assert stored_text(store, document_id) is None, "its chunks went live: they hold its text"
    set_document_text(store, document_id, "hash-a.txt", "one text")  # edited, then edited back before chunking
    assert store.texts.release_chunked_texts(0, 1, "other settings") == 0, "to be cut again: the text is needed"
    assert stored_text(store, document_id) is not None
    assert store.texts.release_chunked_texts(0, 1, "s") == 1
    assert stored_text(store, document_id) is None
    assert store.texts.release_chunked_texts(0, 1, "s") == 0


def stored_text(store: Store, document_id: str) -> str | None:
    with store.engine.connect() as connection:
        return connection.execute(select(documents.c.text).where(documents.c.id == document_id)).scalar_one()


NOTES = {
    "whales.txt": "Whales sing long songs that carry across the cold ocean. " * 6,
    "bread.txt": "Knead the dough, let it rise overnight, then bake the bread until golden. " * 6,
}


def with_chunking(monkeypatch, max_tokens: int, overlap_tokens: int) -> None:
    """Deployments made from now on cut chunks with these settings."""
    chunking = f"chunking:\n  max_tokens: {max_tokens}\n  overlap_tokens: {overlap_tokens}\n"
    monkeypatch.setattr(harness, "manifest_text", lambda *args, **kwargs: MANIFEST_TEXT(*args, **kwargs) + chunking)


def stored_texts(deployment: Deployment) -> list:
    with deployment.store.engine.connect() as connection:
        return list(connection.execute(select(documents.c.text).where(documents.c.status == "active")).scalars())


def searchable_text(deployment: Deployment, path: str) -> str:
    """The text of a file's embedded live chunks, in order (overlaps repeated)."""
    store = deployment.store
    ids = store.index_delta.embedded_chunk_ids(0, 1, deployment.embedder.model_id)
    hits = store.texts.chunk_hits([int(i) for i in ids])
    return " ".join(hit.text for hit in sorted(hits.values(), key=lambda hit: hit.ordinal) if hit.path == path)


def chunks_metadata(result) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey("chunks")]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def ingested_notes(tmp_path, monkeypatch) -> Deployment:
    """NOTES ingested and indexed with chunks of at most 64 tokens."""
    with_chunking(monkeypatch, 64, 8)
    deployment = Deployment(tmp_path, None, HashingEmbedderResource(), shards=1)
    for name, text in NOTES.items():
        deployment.drop(name, text)
    deployment.sync()
    return deployment


def test_text_is_stored_once_and_a_rechunk_reads_the_unchanged_files_again(tmp_path, monkeypatch):
    first = ingested_notes(tmp_path, monkeypatch)
    assert stored_texts(first) == [None, None], "live chunks hold the text; the document row does not"
    assert "cold ocean" in searchable_text(first, "whales.txt")
    chunk_count = first.stats()["total"]["chunks"]

    with_chunking(monkeypatch, 32, 4)  # grace.yaml's chunking changed: every document is cut again
    second = Deployment(tmp_path, None, HashingEmbedderResource(), shards=1)
    [request] = second.tick()
    result = second.ingest(int(request.partition_key))
    assert result.success
    assert chunks_metadata(result)["reread_from_files"] == 2
    assert second.stats()["total"]["chunks"] > chunk_count
    assert stored_texts(second) == [None, None]
    assert "golden" in searchable_text(second, "bread.txt")


def test_a_file_changed_since_it_was_read_is_left_to_the_documents_step(tmp_path, monkeypatch):
    ingested_notes(tmp_path, monkeypatch)
    with_chunking(monkeypatch, 32, 4)
    second = Deployment(tmp_path, None, HashingEmbedderResource(), shards=1)
    second.drop("bread.txt", "Pancakes need no oven at all, only a hot pan. " * 6)  # no tick: unseen yet
    result = second.ingest(0)
    assert result.success
    metadata = chunks_metadata(result)
    assert metadata["reread_from_files"] == 1 and "bread.txt" in metadata["changed_since_read"]
    assert "golden" in searchable_text(second, "bread.txt"), "its old chunks stay searchable"
    second.sync()
    assert "Pancakes" in searchable_text(second, "bread.txt") and "golden" not in searchable_text(second, "bread.txt")
    assert stored_texts(second) == [None, None]

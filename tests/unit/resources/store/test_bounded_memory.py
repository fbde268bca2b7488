"""The chunks and embeddings steps read a shard page by page, so a run's memory does not grow with its shard."""

from __future__ import annotations

import numpy as np
import pytest

from bench.memory import measure_ingest, write_corpus
from grace.resources.db.chunk_rows import NewChunk
from grace.resources.db.schema import ObservedFile
from grace.resources.store import texts as store_texts
from grace.resources.store.store import Store
from tests.helpers.harness import encrypting_store
from tests.helpers.store_writes import replace_chunks, set_document_text, stage_chunks


@pytest.fixture
def store(store_url):
    store = encrypting_store(store_url)
    yield store
    store.dispose()


def add_read(store: Store, sizes: dict[str, int]) -> dict[str, str]:
    """Documents read but not chunked yet, with these file sizes; path -> document id."""
    files = [ObservedFile(path, size, 1, f"hash-{path}") for path, size in sizes.items()]
    store.ledger.record_scan("docs", files, [], [], [], shards=1)
    ids = {path: row.id for path, row in store.ledger.documents_of("docs").items()}
    for path, document_id in ids.items():
        set_document_text(store, document_id, f"hash-{path}", f"the text of {path}")
    return ids


def chunk_of(text: str, ordinal: int = 0) -> NewChunk:
    return NewChunk(ordinal, f"h-{text}", text, 3)


def test_documents_to_chunk_pages_by_size_and_by_id_while_the_pages_are_chunked(store, monkeypatch):
    monkeypatch.setattr(store_texts, "HEADS_PER_READ", 5)  # two reads of what to chunk, cut into pages
    monkeypatch.setattr(store_texts, "PAGE_ROWS", 3)
    sizes = {f"d{n}.txt": 40 for n in range(7)} | {"big.txt": 500}
    ids = add_read(store, sizes)
    assert [len(page) for page in store.texts.documents_to_chunk(0, 1, "s", page_bytes=10**6)] == [3, 2, 3]
    pages = []
    for page in store.texts.documents_to_chunk(0, 1, "s", page_bytes=100):
        pages.append([document.path for document in page])
        for document in page:  # chunked as the step does: each page leaves "needs chunking" as it goes
            stage_chunks(store, document.document_id, document.text_hash, [chunk_of(document.text)], "s", "m@1")
    by_id = sorted(sizes, key=ids.get)
    assert [path for page in pages for path in page] == by_id, "every document once, in id order"
    assert all(sum(sizes[path] for path in page) <= 100 for page in pages if page != ["big.txt"])
    assert ["big.txt"] in pages and max(len(page) for page in pages) == 2
    assert list(store.texts.documents_to_chunk(0, 1, "s")) == []


def test_documents_to_chunk_opens_a_page_only_when_it_is_asked_for(store):
    add_read(store, {f"d{n}.txt": 40 for n in range(6)})
    opened = []
    decrypt = store.vault.decrypt
    store.vault.decrypt = lambda token, aad: opened.append(aad) or decrypt(token, aad)
    pages = store.texts.documents_to_chunk(0, 1, "s", page_bytes=80)
    first = next(pages)
    assert len(first) == 2 and len(opened) == 2, "only the first page's text is in memory"
    assert sum(len(page) for page in pages) == 4 and len(opened) == 6


def test_chunks_to_embed_pages_stay_unique_by_hash_across_pages_and_stages(store):
    ids = add_read(store, {"a.txt": 10, "b.txt": 10, "c.txt": 10})
    live = {"a.txt": ["one", "two", "three", "four"], "b.txt": ["three", "five", "one"], "c.txt": ["kept"]}
    for path, texts in live.items():
        replace_chunks(store, ids[path], f"hash-{path}", [chunk_of(t, i) for i, t in enumerate(texts)], "s")
    store.embeddings.save("m@1", ["h-kept"], np.ones((1, 4), dtype=np.float32))
    edit = [chunk_of("kept"), chunk_of("two", 1), chunk_of("six", 2)]  # an edit of c, staged: "six" is new
    assert stage_chunks(store, ids["c.txt"], "hash-c.txt", edit, "s", "m@1") is False
    yielded = []
    for page in store.texts.chunks_to_embed(0, 1, "m@1", page_size=2):
        assert 1 <= len(page) <= 2
        yielded += [chunk_hash for chunk_hash, _text in page]
        # Saved before the next page is read, as the embeddings step does.
        store.embeddings.save("m@1", [chunk_hash for chunk_hash, _text in page], np.ones((len(page), 4), np.float32))
    assert sorted(yielded) == sorted(f"h-{text}" for text in ("one", "two", "three", "four", "five", "six"))
    assert list(store.texts.chunks_to_embed(0, 1, "m@1", page_size=2)) == []
    assert store.chunks.publish_staged(0, 1, "m@1") == 1


def test_the_memory_bench_ingests_its_corpus_in_a_child_and_reports_its_peak(tmp_path):
    written = write_corpus(tmp_path / "inbox", megabytes=0.5, files=5)
    assert 0.4 * 2**20 < written <= 0.5 * 2**20
    figures = measure_ingest(tmp_path, shards=1)
    assert figures["docs"] == 5 and figures["chunks"] > 5
    assert 50 < figures["setup_rss_mb"] <= figures["peak_rss_mb"] < 1024

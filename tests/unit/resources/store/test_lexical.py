"""store.lexical on SQLite and PostgreSQL: BM25 over keyed term hashes, exact for what is live."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from grace.resources.db.chunk_rows import NewChunk
from grace.resources.db.lexical_tables import lexical_chunks, lexical_terms
from grace.resources.db.schema import chunks
from grace.resources.keys.vault import KeyVault
from grace.resources.store.store import Store
from grace.resources.text.terms import parse_query
from tests.helpers.harness import encrypting_store
from tests.helpers.store_writes import add_live_document as add
from tests.helpers.store_writes import replace_chunks, set_document_text, stage_chunks

KEK = os.urandom(32)


@pytest.fixture
def store(store_url):
    store = encrypting_store(store_url, KEK)
    yield store
    store.dispose()


def found(store: Store, query: str, limit: int = 10) -> list[str]:
    """The texts lexical search ranks for query, best first."""
    ranked = store.lexical.search(parse_query(query), limit)
    hits = store.texts.chunk_hits([chunk_id for chunk_id, _score in ranked])
    return [hits[chunk_id].text for chunk_id, _score in ranked]


TECHNICAL = [
    "The server raised HttpServerError when the socket closed.",
    "Patch CVE-2024-1234 before Friday; it affects the parser.",
    "Pass --dry-run to see what would change.",
    "Call read_config_file with the path of grace.yaml.",
    "Import grace.resources.store.lexical to rank the chunks.",
    "Error E1234 means the disk is full.",
    "A note about herons and the weather in spring.",
]


@pytest.mark.parametrize(
    "query, expected",
    [
        ("HttpServerError", 0),
        ("server error", 0),
        ("cve-2024-1234", 1),
        ("CVE", 1),
        ("--dry-run", 2),
        ("dry", 2),
        ("read_config_file", 3),
        ("config", 3),
        ("grace.resources.store.lexical", 4),
        ("lexical", 4),
        ("e1234", 5),
        ("HÉRONS", 6),
    ],
)
def test_identifiers_and_codes_match_whole_and_by_part(store, query, expected):
    add(store, "tech.txt", TECHNICAL)
    assert found(store, query)[0] == TECHNICAL[expected]


def test_a_whole_identifier_ranks_above_its_parts_alone(store):
    add(store, "a.txt", ["the http layer has a server and an error log", "HttpServerError was raised"])
    assert found(store, "HttpServerError") == [
        "HttpServerError was raised",
        "the http layer has a server and an error log",
    ]


def test_a_phrase_needs_every_one_of_its_words(store):
    add(store, "p.txt", ["dry run of the release", "the run was dry and long", "a dry spell"])
    assert sorted(found(store, '"dry run"')) == ["dry run of the release", "the run was dry and long"]
    assert found(store, "nothing matches this") == []


def test_a_deleted_or_replaced_chunk_leaves_lexical_results_at_once(store):
    document_id = add(store, "doc.txt", ["herons wade in the marsh", "owls hunt at night"])
    add(store, "other.txt", ["a heron stands still"])
    assert sorted(found(store, "herons owls")) == ["herons wade in the marsh", "owls hunt at night"]
    digest = "hash-doc-v2"
    set_document_text(store, document_id, digest, "owls hunt at dusk")
    replace_chunks(store, document_id, digest, [NewChunk(0, "h-owls hunt at dusk", "owls hunt at dusk", 4)], "settings")
    assert found(store, "herons owls") == ["owls hunt at dusk"]
    store.ledger.record_scan("docs", [], [], [], ["doc.txt"], shards=1)
    assert found(store, "owls") == []
    assert found(store, "heron") == ["a heron stands still"]


def test_staged_chunks_are_not_searchable_until_published(store):
    document_id = add(store, "doc.txt", ["the old text about owls"])
    new = [NewChunk(0, "h-new herons", "new herons text", 3)]
    assert not stage_chunks(store, document_id, "hash-new", new, "settings", "model")
    assert found(store, "herons") == []
    assert found(store, "owls") == ["the old text about owls"]


def test_terms_never_reach_the_database_in_the_clear(store, store_url):
    words = ["zanzibarian", "quokkafication", "--frobnicate", "e98765"]
    add(store, "secret.txt", [" ".join(words)])
    assert found(store, "quokkafication") == [" ".join(words)]
    with store.engine.connect() as connection:
        stored = [bytes(term) for term in connection.execute(select(lexical_terms.c.term)).scalars()]
    assert len(stored) >= len(words) and all(len(term) == 16 for term in stored)
    if store_url.startswith("sqlite"):
        raw = Path(store_url.removeprefix("sqlite:///")).read_bytes()
        for candidate in (*words, "frobnicate", "98765"):
            assert candidate.encode() not in raw, f"{candidate} is in the database file"


def test_kek_rotation_rewraps_the_term_key_and_search_answers_the_same(store, store_url):
    add(store, "a.txt", ["the parser handles CVE-2024-1234"])
    before = store.lexical.search(parse_query("parser"), 5)
    new_kek = os.urandom(32)
    store.vault.rotate_kek(new_kek, "the new test KEK")
    reopened = Store(store_url).with_vault(KeyVault(Store(store_url).engine, new_kek, timedelta(days=30), 2))
    assert reopened.lexical.search(parse_query("parser"), 5) == before
    with pytest.raises(Exception, match="KEK"):
        Store(store_url).with_vault(KeyVault(Store(store_url).engine, KEK, timedelta(days=30), 2)).lexical.search(
            parse_query("parser"), 5
        )


def test_data_key_rotation_leaves_the_postings_as_they_are(store):
    add(store, "a.txt", ["owls and herons"])
    with store.engine.connect() as connection:
        before = connection.execute(select(lexical_terms).order_by(lexical_terms.c.term)).all()
    store.vault.rotate(force=True)
    store.vault.rewrap_all()
    with store.engine.connect() as connection:
        assert connection.execute(select(lexical_terms).order_by(lexical_terms.c.term)).all() == before
    assert found(store, "herons") == ["owls and herons"]


def test_backfill_indexes_chunks_cut_before_the_lexical_index(store):
    add(store, "a.txt", ["owls hunt at night", "herons wade"])
    with store.writer.begin() as connection:  # as a store migrated from release 0.6 holds them
        connection.execute(lexical_terms.delete())
        connection.execute(lexical_chunks.delete())
    assert store.lexical.missing() == 2 and found(store, "owls") == []
    assert store.lexical.backfill(0, 1, batch_size=1) == 2
    assert store.lexical.missing() == 0 and found(store, "owls") == ["owls hunt at night"]


def test_postings_of_texts_no_chunk_holds_are_swept_after_the_grace(store):
    document_id = add(store, "a.txt", ["owls hunt at night"])
    set_document_text(store, document_id, "hash-2", "herons wade")
    replace_chunks(store, document_id, "hash-2", [NewChunk(0, "h-herons wade", "herons wade", 2)], "settings")
    assert store.lexical.delete_unreferenced() == 0, "younger than the grace"
    assert store.lexical.delete_unreferenced(grace=timedelta(0)) == 1
    with store.engine.connect() as connection:
        assert connection.execute(select(lexical_chunks.c.chunk_hash)).scalars().all() == ["h-herons wade"]
        live_hashes = connection.execute(select(func.count()).select_from(chunks)).scalar_one()
    assert live_hashes == 1 and found(store, "herons") == ["herons wade"]

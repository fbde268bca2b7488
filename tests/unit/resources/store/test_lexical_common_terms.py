"""store.lexical's common terms, on SQLite and PostgreSQL: a term in more chunk texts than
COMMON_POSTINGS is scored only on the chunks the query's rarer terms match, with the scores a
full read gives them; a query of common terms alone, or whose rarer terms match nothing, reads
them whole."""

from __future__ import annotations

import os

import pytest

from grace.resources.store import lexical
from grace.resources.text.terms import parse_query
from tests.helpers.harness import encrypting_store
from tests.helpers.store_writes import add_live_document as add

COMMON = 5  # COMMON_POSTINGS for these tests: "error" below is in 12 chunk texts


@pytest.fixture
def store(store_url):
    store = encrypting_store(store_url, os.urandom(32))
    # Twelve chunks with `error` (1 to 3 times), three of them with `disk` as well.
    for n in range(12):
        words = ["error"] * (1 + n % 3) + (["disk"] if n % 4 == 0 else []) + [f"filler{n}"] * (n % 5)
        add(store, f"note{n}.txt", [" ".join(words)])
    yield store
    store.dispose()


def ranked(store, query: str) -> list[tuple[str, float]]:
    found = store.lexical.search(parse_query(query), None)
    hits = store.texts.chunk_hits([chunk_id for chunk_id, _score in found])
    return [(hits[chunk_id].text, score) for chunk_id, score in found]


def test_a_common_term_is_scored_only_where_a_rarer_term_matched_with_full_scores(store, monkeypatch):
    whole = ranked(store, "disk error")
    assert len(whole) == 12, "read whole, every chunk with `error` ranks"
    monkeypatch.setattr(lexical, "COMMON_POSTINGS", COMMON)
    restricted = ranked(store, "disk error")
    assert [text for text, _score in restricted] == [text for text, _score in whole if "disk" in text]
    assert len(restricted) == 3
    expected = {text: score for text, score in whole}
    assert [score for _text, score in restricted] == pytest.approx([expected[text] for text, _score in restricted])


@pytest.mark.parametrize("query", ["error", "zebra error"])
def test_common_terms_alone_or_beside_a_term_that_matches_nothing_are_read_whole(store, monkeypatch, query):
    whole = ranked(store, query)
    monkeypatch.setattr(lexical, "COMMON_POSTINGS", COMMON)
    assert ranked(store, query) == whole
    assert len(whole) == 12


def test_a_phrase_of_a_common_and_a_rare_word_keeps_every_chunk_holding_both(store, monkeypatch):
    monkeypatch.setattr(lexical, "COMMON_POSTINGS", COMMON)
    assert sorted(text for text, _score in ranked(store, '"error disk"')) == sorted(
        text for text, _score in ranked(store, "disk error")
    )

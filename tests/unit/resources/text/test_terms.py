"""Search terms of technical text: identifiers, flags and codes match whole and by part; case and
accents fold; a quoted phrase matches only its words in order."""

from __future__ import annotations

import pytest

from grace.resources.text.terms import (
    MAX_PARTS,
    MAX_TERM_CHARS,
    holds_phrase,
    parse_query,
    phrase_words,
    terms,
    terms_of_word,
)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("snake_case_name", ["snake_case_name", "snake", "case", "name"]),
        ("os.path.join", ["os.path.join", "os", "path", "join"]),
        ("HttpServerError", ["httpservererror", "http", "server", "error"]),
        ("HTTPServer", ["httpserver", "http", "server"]),
        ("--dry-run", ["--dry-run", "dry-run", "dry", "run"]),
        ("E1234", ["e1234", "e", "1234"]),
        ("CVE-2024-1234", ["cve-2024-1234", "cve", "2024", "1234"]),
        ("RésuméFile", ["resumefile", "resume", "file"]),
        ("Ärger", ["arger"]),
        ("word", ["word"]),
    ],
)
def test_a_word_is_a_term_whole_and_by_its_parts(word, expected):
    assert terms_of_word(word) == expected


def test_text_gives_each_words_terms_with_repeats_and_no_punctuation():
    found = terms("Run `grace --mode hybrid`, then grace again; see E1234.")
    assert found.count("grace") == 2, "a repeat counts twice: its frequency"
    assert "--mode" in found and "mode" in found
    assert "e1234" in found and "1234" in found
    assert not any(term.endswith((".", ",", ";", "`")) for term in found)


def test_a_query_shares_terms_with_the_forms_people_write():
    document = set(terms("raise HttpServerError when os.path.join fails with CVE-2024-1234"))
    for query in ("server error", "http", "path join", "cve 2024 1234", "HTTPSERVERERROR", "Os.Path.Join"):
        assert set(terms(query)) <= document, query
    assert not set(terms("servers")) <= document, "no stemming: a different word is a different term"


def test_a_hostile_word_gives_bounded_terms():
    long_run = "-".join(["Ab"] * 100_000)
    found = terms_of_word(long_run)
    assert all(len(term) <= MAX_TERM_CHARS for term in found)
    assert len(found) <= 2 + 2 * MAX_PARTS
    assert terms_of_word("x" * 5_000_000) == ["x" * MAX_TERM_CHARS]


def test_a_phrase_matches_its_words_in_order_and_adjacent_only():
    text = "Install the Quick-Start guide, then the quick start of grace."
    assert holds_phrase(text, phrase_words("quick start of"))
    assert holds_phrase(text, phrase_words('"QUICK-START guide"'))
    assert not holds_phrase(text, phrase_words("start quick"))
    assert not holds_phrase(text, phrase_words("install guide"))
    assert not holds_phrase(text, phrase_words("  "))


def test_stop_words_are_not_terms_but_a_phrase_still_needs_them_in_its_text():
    assert terms("The cat is on the mat") == ["cat", "mat"]
    query = parse_query('"on the mat" cat')
    assert query.terms == ("mat", "cat") and query.required == frozenset({"mat"})
    assert query.phrases == (("on", "the", "mat"),)
    assert holds_phrase("The cat sat on the mat.", list(query.phrases[0]))
    assert not holds_phrase("The mat is on the cat.", list(query.phrases[0]))


def test_a_query_parses_into_terms_phrases_and_required_words():
    query = parse_query('fix "dry run" --dry-run "" "unclosed')
    assert query.phrases == (("dry", "run"),) and query.required == frozenset({"dry", "run"})
    assert query.terms[:3] == ("fix", "dry", "run") and "--dry-run" in query.terms and "unclosed" in query.terms
    assert parse_query("!!! ...").terms == ()

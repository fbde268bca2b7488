"""Words of technical text as search terms: what people type to find a command, an identifier or
an error code matches it whole and by part, in any case and with or without accents.

`CVE-2024-1234` gives the terms `cve-2024-1234`, `cve`, `2024` and `1234`; `HttpServerError` gives
`httpservererror`, `http`, `server` and `error`; `--dry-run` gives `--dry-run`, `dry-run`, `dry`
and `run`. Documents and queries go through the same function, so a query for `server` finds
`HttpServerError`, and a query for the whole identifier ranks the chunks holding it whole first
(they match every one of its terms).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

# A word: letters and digits, joined by the punctuation identifiers and codes are made of.
_WORD = re.compile(r"(?:--?)?[^\W_]+(?:[._\-/:@+#]+[^\W_]+)*|[^\W_]+", re.UNICODE)
_JOINERS = re.compile(r"[._\-/:@+#]+")
# Where a CamelCase or letters-then-digits word splits: before an upper case letter that follows a
# lower case one, before the last capital of a run followed by lower case (HTTPServer), between
# letters and digits.
_CASE_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_]+", re.UNICODE)
MAX_TERM_CHARS = 64  # a longer "word" (a hash, base64) is indexed by its first 64 characters
CACHED_WORD_CHARS = 2 * MAX_TERM_CHARS  # longer words are split each time they occur, never cached
MAX_PARTS = 16  # of one word: a 5 MB run of joined parts must not become a million terms
# Lucene's English stop words. They are in nearly every chunk, so their postings are the largest and
# rank nothing; worse, fused with dense ranks, a match on `the` alone would outvote a paraphrase.
# A quoted phrase still needs them, in order: its words are checked in the chunk's text.
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)


def fold(text: str) -> str:
    """Case and accents folded: `Ärger` and `arger` are one term."""
    return _without_accents(text).casefold()


def _without_accents(text: str) -> str:
    if text.isascii():  # nothing to decompose: most words of technical text, at a fraction of the cost
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def words(text: str) -> Iterator[str]:
    """The words of text, in order, as they are written (for phrases: their folded sequence)."""
    for match in _WORD.finditer(text):
        yield match.group(0)


def terms_of_word(word: str) -> list[str]:
    """The word whole, then its parts, folded, each once, in order."""
    found = [fold(word)[:MAX_TERM_CHARS]]
    bare = word.lstrip("-")
    if bare != word:
        found.append(fold(bare)[:MAX_TERM_CHARS])
    pieces = [piece for piece in _JOINERS.split(bare) if piece]
    if len(pieces) > 1:
        # Hyphenated runs inside (dry-run of --dry-run-now) stay findable by their pieces.
        found.extend(fold(piece)[:MAX_TERM_CHARS] for piece in pieces[:MAX_PARTS])
    for piece in pieces[:MAX_PARTS]:
        parts = _CASE_PARTS.findall(_without_accents(piece))
        if len(parts) > 1:
            found.extend(fold(part)[:MAX_TERM_CHARS] for part in parts[:MAX_PARTS])
    return list(dict.fromkeys(term for term in found if term))


def terms(text: str) -> list[str]:
    """Every term of text but STOP_WORDS, with repeats (their count is the term's frequency in the text)."""
    return [term for word in words(text) for term in _indexed_terms(word)]


def _indexed_terms(word: str) -> tuple[str, ...]:
    # A corpus's words recur, so their terms are worked out once; a giant word is not kept.
    if len(word) > CACHED_WORD_CHARS:
        return tuple(term for term in terms_of_word(word) if term not in STOP_WORDS)
    return _cached_indexed_terms(word)


@functools.lru_cache(maxsize=1 << 16)
def _cached_indexed_terms(word: str) -> tuple[str, ...]:
    return tuple(term for term in terms_of_word(word) if term not in STOP_WORDS)


def phrase_words(phrase: str) -> list[str]:
    """A quoted phrase as the folded word sequence a chunk must hold, in order and adjacent."""
    return [fold(word) for word in words(phrase)]


def holds_phrase(text: str, phrase: list[str]) -> bool:
    """Whether text holds the folded words of phrase one after another."""
    if not phrase:
        return False
    sequence = [fold(word) for word in words(text)]
    width = len(phrase)
    first = phrase[0]
    return any(sequence[start : start + width] == phrase for start, word in enumerate(sequence) if word == first)


_QUOTED = re.compile(r'"([^"]*)"')


@dataclass(frozen=True)
class LexicalQuery:
    """A query as lexical search reads it: every term ranks (BM25), and each quoted phrase must appear.

    required: for each phrase, the whole-word terms a chunk needs before its text is checked.
    """

    terms: tuple[str, ...]
    phrases: tuple[tuple[str, ...], ...]
    required: frozenset[str]


def parse_query(query: str) -> LexicalQuery:
    """`"exact phrase" other words`: a phrase is its quoted words in order; an unclosed quote is a word."""
    phrases = tuple(tuple(found) for found in (phrase_words(match) for match in _QUOTED.findall(query)) if found)
    wholes = (terms_of_word(word)[0] for quoted in _QUOTED.findall(query) for word in words(quoted))
    required = frozenset(term for term in wholes if term not in STOP_WORDS)
    return LexicalQuery(tuple(dict.fromkeys(terms(query))), phrases, required)

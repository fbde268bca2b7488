"""Lexical search recomputed from scratch: BM25 over every live chunk's decrypted text, by brute force."""

from __future__ import annotations

import math
from collections import Counter

from sqlalchemy import select

from grace.resources.db.schema import chunks
from grace.resources.store.lexical import K1, B
from grace.resources.store.store import Store
from grace.resources.text.terms import holds_phrase, parse_query, terms


def brute_force_lexical(store: Store, query: str) -> list[tuple[int, float]]:
    """Every live chunk of an active document that matches query, (chunk id, BM25), best first, ties by id."""
    with store.engine.connect() as connection:
        ids = list(connection.execute(select(chunks.c.id)).scalars())
    texts = {chunk_id: hit.text for chunk_id, hit in store.texts.chunk_hits(ids).items()}
    counts = {chunk_id: Counter(terms(text)) for chunk_id, text in texts.items()}
    if not counts:
        return []
    live, mean = len(counts), sum(sum(c.values()) for c in counts.values()) / len(counts)
    parsed = parse_query(query)
    df = {term: sum(1 for c in counts.values() if term in c) for term in parsed.terms}
    scored = []
    for chunk_id, count in counts.items():
        matched = [term for term in parsed.terms if term in count]
        if not matched or not parsed.required <= set(count):
            continue
        if not all(holds_phrase(texts[chunk_id], list(phrase)) for phrase in parsed.phrases):
            continue
        norm = K1 * (1 - B + B * sum(count.values()) / max(mean, 1.0))
        idf = {term: math.log(1 + (live - df[term] + 0.5) / (df[term] + 0.5)) for term in matched}
        scored.append((chunk_id, sum(idf[t] * count[t] * (K1 + 1) / (count[t] + norm) for t in matched)))
    return sorted(scored, key=lambda pair: (-pair[1], pair[0]))


def rounded(ranked: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Ranked pairs with scores rounded and ties ordered by id: two summation orders agree on these."""
    return sorted(((chunk_id, round(score, 6)) for chunk_id, score in ranked), key=lambda pair: (-pair[1], pair[0]))

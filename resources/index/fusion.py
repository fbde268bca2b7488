"""Reciprocal rank fusion: the dense and lexical rankings of a query made into one.

Each side's scores live on scales of their own (cosine, BM25), so only ranks are fused: a chunk
scores the sum of 1 / (RRF_K + rank) over the sides that found it (Cormack et al., 2009). RRF_K
damps the head of each list, so a chunk both sides rank well beats one that a single side ranks
first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RRF_K = 60  # the constant of the original paper; Elasticsearch, OpenSearch and Weaviate default to it
FUSION_DEPTH = 50  # candidates taken from each side, at least: a hit ranked 50th by one side still counts


@dataclass(frozen=True)
class Ranked:
    """A chunk, its score, and its 1-based rank on each side (None: that side did not find it)."""

    chunk_id: int
    score: float
    dense_rank: int | None
    lexical_rank: int | None

    @property
    def found_by(self) -> str:
        if self.dense_rank is not None and self.lexical_rank is not None:
            return "both"
        return "dense" if self.dense_rank is not None else "lexical"


def fuse(
    dense: Sequence[tuple[int, float]], lexical: Sequence[tuple[int, float]], only_lexical: bool = False
) -> list[Ranked]:
    """Both rankings ((chunk id, score), best first) fused, best first, ties by chunk id.

    only_lexical: keep only chunks the lexical side found (a phrase query: it alone checks the phrase).
    """
    dense_rank = {chunk_id: rank for rank, (chunk_id, _score) in enumerate(dense, 1)}
    lexical_rank = {chunk_id: rank for rank, (chunk_id, _score) in enumerate(lexical, 1)}
    candidates = set(lexical_rank) if only_lexical else set(dense_rank) | set(lexical_rank)
    fused = []
    for chunk_id in candidates:
        ranks = (dense_rank.get(chunk_id), lexical_rank.get(chunk_id))
        score = sum(1.0 / (RRF_K + rank) for rank in ranks if rank is not None)
        fused.append(Ranked(chunk_id, score, *ranks))
    fused.sort(key=lambda entry: (-entry.score, entry.chunk_id))
    return fused

"""Fusion: the dense and lexical rankings of a query made into one.

`relative` (the default, as in Weaviate since 1.24): each side's scores are scaled to [0, 1] over
the candidates it returned (its best is 1, its last 0), and a chunk scores
dense_weight × dense + (1 − dense_weight) × lexical, a side that missed it adding 0. The gap
between a side's scores counts, so a lexical side that matches many chunks about equally (the
query's words are common) moves the dense order little, and one that finds a rare identifier
moves it a lot.

`rrf`, reciprocal rank fusion (Cormack et al., 2009): a chunk scores
dense_weight / (RRF_K + dense rank) + (1 − dense_weight) / (RRF_K + lexical rank). Only ranks
count, so the lexical side's first hit weighs as much however weak its match; on real manual
pages this hurt the queries lexical search cannot answer (docs/performance.md#search-quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grace.core.index_config import DENSE_WEIGHT, FusionMethod, SearchConfig

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


@dataclass(frozen=True)
class Fusion:
    """How hybrid search merges the two sides (grace.yaml's search.fusion and search.dense_weight)."""

    method: FusionMethod = "relative"
    dense_weight: float = DENSE_WEIGHT

    @classmethod
    def of(cls, search: SearchConfig) -> Fusion:
        return cls(search.fusion, search.dense_weight)

    def fuse(
        self, dense: Sequence[tuple[int, float]], lexical: Sequence[tuple[int, float]], only_lexical: bool = False
    ) -> list[Ranked]:
        """Both rankings ((chunk id, score), best first) fused, best first, ties by chunk id.

        only_lexical: keep only chunks the lexical side found (a phrase query: it alone checks the phrase).
        """
        dense_rank = {chunk_id: rank for rank, (chunk_id, _score) in enumerate(dense, 1)}
        lexical_rank = {chunk_id: rank for rank, (chunk_id, _score) in enumerate(lexical, 1)}
        if self.method == "relative":
            dense_part, lexical_part = _relative(dense), _relative(lexical)
        else:
            dense_part = {chunk_id: 1.0 / (RRF_K + rank) for chunk_id, rank in dense_rank.items()}
            lexical_part = {chunk_id: 1.0 / (RRF_K + rank) for chunk_id, rank in lexical_rank.items()}
        candidates = set(lexical_rank) if only_lexical else set(dense_rank) | set(lexical_rank)
        fused = [
            Ranked(
                chunk_id,
                self.dense_weight * dense_part.get(chunk_id, 0.0)
                + (1 - self.dense_weight) * lexical_part.get(chunk_id, 0.0),
                dense_rank.get(chunk_id),
                lexical_rank.get(chunk_id),
            )
            for chunk_id in candidates
        ]
        fused.sort(key=lambda entry: (-entry.score, entry.chunk_id))
        return fused


DEFAULT_FUSION = Fusion()  # grace.yaml's defaults


def _relative(ranking: Sequence[tuple[int, float]]) -> dict[int, float]:
    """Each chunk's score scaled to [0, 1] over the ranking: the best 1, the last 0 (all 1 when they tie)."""
    if not ranking:
        return {}
    best, last = ranking[0][1], ranking[-1][1]
    spread = best - last
    return {chunk_id: (score - last) / spread if spread > 0 else 1.0 for chunk_id, score in ranking}

"""grace.yaml's `index` and `search` sections: how the vector index is built, and how search ranks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from grace.core.section import Section
from grace.core.validators import validate_cron

SEARCH_MODES = ("hybrid", "dense", "lexical")
SearchMode = Literal["hybrid", "dense", "lexical"]
FusionMethod = Literal["relative", "rrf"]
# The dense side's weight in hybrid search. Measured on real manual pages (docs/performance.md#search-quality):
# lighter, and the queries whose words the right page lacks rank worse than in dense search alone.
DENSE_WEIGHT = 0.75


class RebuildConfig(Section):
    """When a shard's Annoy index is rebuilt."""

    when_stale_fraction: float = Field(
        default=0.10,
        gt=0,
        le=1,
        description="rebuild once pending + tombstoned vectors pass this share of the shard",
    )
    cron: str = Field(default="0 * * * *", description="rebuild every shard on this schedule")
    inline_max_delta: int = Field(
        default=1000,
        ge=0,
        description="an ingest run rebuilds its shard's index itself, before it ends, when at most this many "
        "vectors are pending or tombstoned (0: never); bigger deltas go to the rebuild_index job",
    )
    inline_max_vectors: int = Field(
        default=50_000,
        ge=0,
        description="...and the shard holds at most this many vectors: a rebuild costs in proportion to the shard",
    )

    _cron = field_validator("cron")(validate_cron)


# A shard of at most this many vectors is searched exactly, not by Annoy (resources/index/vector_index.py).
EXACT_SEARCH_MAX_ITEMS = 50_000


class IndexConfig(Section):
    """The vector index: static shards, one Annoy file each."""

    shards: int = Field(default=4, ge=1, le=256, description="static partitions, 1 to 256")
    trees: int = Field(default=50, ge=1, le=1000, description="Annoy trees per shard")
    search_k: int = Field(
        default=25000,
        ge=1,
        description=f"Annoy nodes inspected per query in each shard of over {EXACT_SEARCH_MAX_ITEMS:,} vectors "
        "(smaller shards are searched exactly); higher = better recall",
    )
    rebuild: RebuildConfig = RebuildConfig()


class SearchConfig(Section):
    """How search ranks: the vectors, the lexical index, or both fused."""

    mode: SearchMode = Field(
        default="hybrid",
        description="hybrid: dense and lexical results fused; dense: vectors only; "
        "lexical: BM25 over the terms only; a query may ask for another",
    )
    fusion: FusionMethod = Field(
        default="relative",
        description="how hybrid fuses: relative (each side's scores scaled to 0..1, then weighted) or "
        "rrf (reciprocal rank fusion: ranks only, weighted)",
    )
    dense_weight: float = Field(
        default=DENSE_WEIGHT,
        ge=0,
        le=1,
        description="the dense side's weight in hybrid search, 0 to 1; the lexical side has the rest",
    )


def check_mode(mode: str) -> SearchMode:
    """mode, if it is a search mode; a ValueError naming the modes otherwise."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown search mode {mode!r}: use one of {', '.join(SEARCH_MODES)}")
    return mode  # type: ignore[return-value]

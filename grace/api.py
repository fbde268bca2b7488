"""Grace from Python: the same search and stats as the CLI, for a manifest file.

from grace.api import search
for hit in search("what changed in the Q3 numbers", k=3):
    print(hit.score, hit.path, hit.text)
"""

from __future__ import annotations

from pathlib import Path

from grace.core.manifest import load_manifest
from grace.resources import build_resources
from grace.resources.search import Searcher, SearchHit, index_stats


def searcher(config: str | Path | None = None) -> Searcher:
    """A Searcher over the services a manifest wires ($GRACE_CONFIG or ./grace.yaml by default)."""
    resources = build_resources(load_manifest(config))
    return Searcher(resources["store"].get(), resources["vector_index"].get(), resources["embedder"].get())


def search(query: str, k: int = 5, config: str | Path | None = None) -> list[SearchHit]:
    """The k chunks nearest to the query across every shard, best first.

    Lone surrogates (undecodable bytes from argv or a file name) become U+FFFD, with a UnicodeWarning.
    """
    return searcher(config).search(query, k)


def stats(config: str | Path | None = None) -> dict:
    """total_embeddings, indexed_embeddings, pending, tombstoned, index_coverage, per shard and in total."""
    found = searcher(config)
    return index_stats(found.store, found.index, found.embedder.model_id)

"""Semantic search over every shard, and index stats computed from the store and index files."""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from grace.resources.embedding.embedder import Embedder, embedder_for_model_id
from grace.resources.index.shard_state import ShardView, coverage, shard_views, stale_fraction
from grace.resources.index.vector_index import ShardedIndex
from grace.resources.store.store import Store
from grace.resources.text.readers.base import HEADING_SEPARATOR

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class SearchHit:
    score: float
    source: str
    path: str
    chunk: int
    text: str
    chunk_id: int
    title: str = ""  # the document's title (a PDF's or HTML page's own, else its file name)
    heading: str = ""  # the heading path the chunk sits under, e.g. "Install > Linux"
    first_page: int | None = None  # pages, for paged documents (PDF)
    last_page: int | None = None


class Searcher:
    """Encodes a query, asks every shard's index and scans its pending vectors exactly."""

    def __init__(self, store: Store, index: ShardedIndex, embedder: Embedder):
        self.store = store
        self.index = index
        self.embedder = embedder

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        """The k chunks nearest to the query, best first; undecodable characters warn and become U+FFFD."""
        if not query.strip():
            raise ValueError("the query is empty; pass some words to search for")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query, replaced = repair_query(query)
        if replaced:
            warnings.warn(f"the query was not valid Unicode; searching for {query!r} instead", UnicodeWarning, 2)
        serving = self.serving_embedder()
        return self.search_vector(serving.encode([query])[0], k, serving.model_id)

    def serving_embedder(self) -> Embedder:
        """The embedder of the model search answers from (see serving_model.py): the configured one,
        or during a re-embedding for it, the model served before, which the old vectors need."""
        serving = self.store.serving.model(self.embedder.model_id)
        if serving == self.embedder.model_id:
            return self.embedder
        previous = embedder_for_model_id(serving, self.embedder)
        if previous is None:
            warnings.warn(
                f"the store serves {serving} while it re-embeds for {self.embedder.model_id}, and this Grace cannot "
                f"load {serving}: searching only the chunks re-embedded so far",
                RuntimeWarning,
                2,
            )
            return self.embedder
        return previous

    def search_vector(self, vector: np.ndarray, k: int, model_id: str | None = None) -> list[SearchHit]:
        """The k chunks nearest to an encoded query, from model_id's vectors (by default the serving model's)."""
        model_id = model_id or self.store.serving.model(self.embedder.model_id)
        ids, scores = [], []
        for view in shard_views(self.store, self.index, model_id):
            shard_ids, shard_scores = self._shard_candidates(view, vector, k, model_id)
            ids.append(shard_ids)
            scores.append(shard_scores)
        all_ids, all_scores = np.concatenate(ids), np.concatenate(scores)
        best = np.argsort(-all_scores, kind="stable")[:k]
        hits = self.store.texts.chunk_hits([int(chunk_id) for chunk_id in all_ids[best]])
        results = []
        for position in best:
            hit = hits.get(int(all_ids[position]))
            if hit is not None:  # removed between the id lookup and now
                results.append(
                    SearchHit(
                        float(all_scores[position]),
                        hit.source,
                        hit.path,
                        hit.ordinal,
                        hit.text,
                        hit.chunk_id,
                        hit.title,
                        HEADING_SEPARATOR.join(hit.heading),
                        hit.first_page,
                        hit.last_page,
                    )
                )
        return results

    def _shard_candidates(
        self, view: ShardView, vector: np.ndarray, k: int, model_id: str
    ) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if view.index is not None:
            # Asking for k + tombstoned (nearest() raises the budget to match) guarantees
            # min(k, live indexed) live ids: Annoy returns every item it was asked for.
            ids, scores = view.index.nearest(vector, k + len(view.tombstoned), self.index.search_k_per_shard)
            alive = ~np.isin(ids, view.tombstoned)
            ids, scores = ids[alive], scores[alive]
        if len(view.pending):
            pending_ids, vectors = self.store.embeddings.vectors_of(view.pending, model_id)
            ids = np.concatenate([ids, pending_ids])
            scores = np.concatenate([scores, vectors @ vector.astype(np.float32)])
        return ids, scores.astype(np.float32)


def repair_query(query: str) -> tuple[str, bool]:
    """(query with each lone surrogate replaced by U+FFFD, whether any was).

    Bytes in argv that are not UTF-8 reach Python as lone surrogates (PEP 383), and the
    tokenizer rejects any string that holds one.
    """
    repaired, replaced = _LONE_SURROGATE.subn("\ufffd", query)
    return repaired, replaced > 0


def index_stats(store: Store, index: ShardedIndex, target_model_id: str) -> dict:
    """Per-shard and total counts of the serving model's vectors, recomputed from the tables and
    index files, and the progress of a re-embedding for target_model_id if one is under way."""
    model_id = store.serving.model(target_model_id)
    shards = []
    for view in shard_views(store, index, model_id):
        shard = view.shard
        counts = store.documents.shard_counts(shard, index.shards)
        shards.append(
            {
                "shard": shard,
                "total_embeddings": view.total,
                "indexed_embeddings": view.indexed,
                "pending": len(view.pending),
                "tombstoned": len(view.tombstoned),
                "index_coverage": view.coverage,
                "index_version": view.index.meta.version if view.index else None,
                "index_problem": view.index_problem,
                **counts,
            }
        )
    summed_keys = [key for key, value in shards[0].items() if isinstance(value, int) and key != "shard"]
    total = {key: sum(row[key] for row in shards) for key in summed_keys}
    total["index_coverage"] = coverage(total["indexed_embeddings"], total["total_embeddings"])
    for row in [*shards, total]:
        row["stale_fraction"] = stale_fraction(row["pending"], row["tombstoned"], row["total_embeddings"])
    quarantined = [
        {"source": source, "path": path, "reason": reason} for source, path, reason in store.documents.quarantined()
    ]
    reembedding = None
    if model_id != target_model_id:
        left = store.serving.chunks_lacking(target_model_id)
        reembedding = {"target_model_id": target_model_id, "chunks_left": left, "chunks": total["chunks"]}
    return {
        "model_id": model_id,
        "reembedding": reembedding,
        "shards": shards,
        "total": total,
        "quarantined": quarantined,
        "not_read": store.ledger.not_read(),  # {source: {suffix: files}} that match no pattern
    }


def hit_dict(hit: SearchHit) -> dict:
    return asdict(hit)

"""Search over every shard (dense, lexical or hybrid), and index stats computed from the store and index files."""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from grace.core.index_config import SearchMode, check_mode
from grace.core.manifest import Manifest
from grace.core.search_filter import SearchFilter
from grace.resources.embedding.embedder import Embedder, embedder_for_model_id
from grace.resources.index.fusion import DEFAULT_FUSION, FUSION_DEPTH, Fusion, Ranked
from grace.resources.index.shard_state import ShardView, coverage, shard_views, stale_fraction
from grace.resources.index.vector_index import ShardedIndex
from grace.resources.store.chunk_filter import ChunkFilter
from grace.resources.store.held_deletes import Hold
from grace.resources.store.store import Store
from grace.resources.text.readers.base import HEADING_SEPARATOR
from grace.resources.text.terms import LexicalQuery, holds_phrase, parse_query

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
PHRASE_CHECK_BATCH = 200  # lexical candidates filtered, or whose text is opened to check a phrase, at once
FILTER_WIDENING = 4  # a filtered shard asks Annoy for this many times more candidates until k pass


@dataclass(frozen=True)
class SearchHit:
    score: float  # dense: cosine; lexical: BM25; hybrid: the fused score (resources/index/fusion.py)
    source: str
    path: str
    chunk: int
    text: str
    chunk_id: int
    title: str = ""  # the document's title (a PDF's or HTML page's own, else its file name)
    heading: str = ""  # the heading path the chunk sits under, e.g. "Install > Linux"
    first_page: int | None = None  # pages, for paged documents (PDF)
    last_page: int | None = None
    dense_rank: int | None = None  # 1-based rank among the vectors' candidates; None: not found by them
    lexical_rank: int | None = None  # among the lexical index's; None: not found by it
    found_by: str = "dense"  # "dense", "lexical" or "both"
    # The query's cosine similarity to the chunk, whichever side found it (None in lexical mode, where
    # no query is encoded): the seed's "similarity score", which a fused score is not.
    similarity: float | None = None


class Searcher:
    """Answers a query from the vectors (every shard's index and its pending vectors, exactly), from the
    lexical index, or from both fused as fusion says, as mode says (grace.yaml's search.mode by default).
    sources, grace.yaml's source names, lets a filter on an unknown source be refused by name."""

    def __init__(
        self,
        store: Store,
        index: ShardedIndex,
        embedder: Embedder,
        mode: SearchMode = "hybrid",
        sources: tuple[str, ...] = (),
        fusion: Fusion = DEFAULT_FUSION,
    ):
        self.store = store
        self.index = index
        self.embedder = embedder
        self.mode = check_mode(mode)
        self.sources = sources
        self.fusion = fusion
        # Queries are encoded one at a time: the torch backend is not documented as thread-safe, and on
        # a CPU the model uses every core for one query anyway. Store and index reads run concurrently.
        self._encode_lock = threading.Lock()

    @classmethod
    def configured(cls, store: Store, index: ShardedIndex, embedder: Embedder, manifest: Manifest) -> Searcher:
        """A Searcher as grace.yaml's search section and sources say."""
        sources = tuple(source.name for source in manifest.sources)
        return cls(store, index, embedder, manifest.search.mode, sources, Fusion.of(manifest.search))

    def search(
        self, query: str, k: int = 10, mode: SearchMode | None = None, only: SearchFilter | None = None
    ) -> list[SearchHit]:
        """The k best chunks for the query that pass the filter only, best first; undecodable characters
        warn and become U+FFFD. The filter applies inside each side's search: k hits come back whenever
        k chunks pass it.

        A `"quoted phrase"` must appear in a lexical or hybrid hit exactly (dense search ignores quotes).
        """
        mode = check_mode(mode or self.mode)
        if only is not None:
            only.check_sources(self.sources)
        chosen = None if only is None or only.is_empty else ChunkFilter(self.store.texts, only)
        if not query.strip():
            raise ValueError("the query is empty; pass some words to search for")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query, replaced = repair_query(query)
        if replaced:
            warnings.warn(f"the query was not valid Unicode; searching for {query!r} instead", UnicodeWarning, 2)
        lexical_query = parse_query(query)
        if mode == "lexical" or (mode == "hybrid" and lexical_query.phrases):
            lexical = self._lexical_ranked(lexical_query, k if mode == "lexical" else max(k, FUSION_DEPTH), chosen)
            if mode == "lexical":
                return self._hits(
                    [Ranked(chunk_id, score, None, rank) for rank, (chunk_id, score) in enumerate(lexical, 1)], {}
                )
        serving = self.serving_embedder()
        with self._encode_lock:
            vector = serving.encode([query])[0]
        if mode == "dense":
            return self.search_vector(vector, k, serving.model_id, chosen)
        if not lexical_query.phrases:
            lexical = self._lexical_ranked(lexical_query, max(k, FUSION_DEPTH), chosen)
        dense = self._dense_ranked(vector, max(k, FUSION_DEPTH), serving.model_id, chosen)
        fused = self.fusion.fuse(dense, lexical, only_lexical=bool(lexical_query.phrases))
        similarity = dict(dense)

        def add_similarities(window: list[Ranked]) -> None:
            found_lexically = [entry.chunk_id for entry in window if entry.chunk_id not in similarity]
            if found_lexically:
                ids, vectors = self.store.embeddings.vectors_of(found_lexically, serving.model_id)
                if len(ids):  # none: chunks not embedded for the serving model yet
                    similarity.update(zip(ids.tolist(), (vectors @ vector.astype(np.float32)).tolist()))

        return self._live_hits(fused, k, similarity, add_similarities)

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

    def search_vector(
        self, vector: np.ndarray, k: int, model_id: str | None = None, chosen: ChunkFilter | None = None
    ) -> list[SearchHit]:
        """The k chunks nearest to an encoded query, from model_id's vectors (by default the serving model's)."""
        dense = self._dense_ranked(vector, max(k, FUSION_DEPTH), model_id, chosen)
        ranked = [Ranked(chunk_id, score, rank, None) for rank, (chunk_id, score) in enumerate(dense, 1)]
        return self._live_hits(ranked, k, dict(dense))

    def _live_hits(
        self,
        ranked: list[Ranked],
        k: int,
        similarity: dict[int, float],
        before_window: Callable[[list[Ranked]], None] | None = None,
    ) -> list[SearchHit]:
        """The first k of ranked whose chunks are still live when their text is read, k candidates at a
        time: a chunk an ingest replaced after it was ranked gives its place to the next, so a search
        during an edit never comes back short."""
        hits: list[SearchHit] = []
        for start in range(0, len(ranked), k):
            window = ranked[start : start + k]
            if before_window is not None:
                before_window(window)
            hits += self._hits(window, similarity)
            if len(hits) >= k:
                break
        return hits[:k]

    def _dense_ranked(
        self, vector: np.ndarray, k: int, model_id: str | None, chosen: ChunkFilter | None
    ) -> list[tuple[int, float]]:
        model_id = model_id or self.store.serving.model(self.embedder.model_id)
        ids, scores = [], []
        for view in shard_views(self.store, self.index, model_id):
            shard_ids, shard_scores = self._shard_candidates(view, vector, k, model_id, chosen)
            ids.append(shard_ids)
            scores.append(shard_scores)
        all_ids, all_scores = np.concatenate(ids), np.concatenate(scores)
        best = np.argsort(-all_scores, kind="stable")[:k]
        return [(int(all_ids[position]), float(all_scores[position])) for position in best]

    def _lexical_ranked(self, query: LexicalQuery, k: int, chosen: ChunkFilter | None) -> list[tuple[int, float]]:
        """The k best lexical candidates that pass the filter; with phrases, only those whose text holds
        each one, in order."""
        if not query.phrases and chosen is None:
            return self.store.lexical.search(query, k)
        ranked = self.store.lexical.search(query, None)
        kept = []
        for start in range(0, len(ranked), PHRASE_CHECK_BATCH):
            batch = ranked[start : start + PHRASE_CHECK_BATCH]
            if chosen is not None:
                allowed = chosen.allowed(chunk_id for chunk_id, _score in batch)
                batch = [(chunk_id, score) for chunk_id, score in batch if chunk_id in allowed]
            if query.phrases:
                texts = self.store.texts.chunk_hits([chunk_id for chunk_id, _score in batch])
                batch = [
                    (chunk_id, score)
                    for chunk_id, score in batch
                    if chunk_id in texts
                    and all(holds_phrase(texts[chunk_id].text, list(phrase)) for phrase in query.phrases)
                ]
            kept.extend(batch)
            if len(kept) >= k:
                return kept[:k]
        return kept

    def _hits(self, ranked: list[Ranked], similarity: dict[int, float]) -> list[SearchHit]:
        hits = self.store.texts.chunk_hits([entry.chunk_id for entry in ranked])
        results = []
        for entry in ranked:
            hit = hits.get(entry.chunk_id)
            if hit is not None:  # removed between the id lookup and now
                results.append(
                    SearchHit(
                        entry.score,
                        hit.source,
                        hit.path,
                        hit.ordinal,
                        hit.text,
                        hit.chunk_id,
                        hit.title,
                        HEADING_SEPARATOR.join(hit.heading),
                        hit.first_page,
                        hit.last_page,
                        entry.dense_rank,
                        entry.lexical_rank,
                        entry.found_by,
                        similarity.get(entry.chunk_id),
                    )
                )
        return results

    def _shard_candidates(
        self, view: ShardView, vector: np.ndarray, k: int, model_id: str, chosen: ChunkFilter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if view.index is not None:
            # Asking for k + tombstoned (nearest() raises the budget to match) guarantees
            # min(k, live indexed) live ids: Annoy returns every item it was asked for. With a filter,
            # the ask widens until k pass it or it covers the whole shard.
            items, asked = len(view.index.chunk_ids), k + len(view.tombstoned)
            while True:
                ids, scores = view.index.nearest(vector, asked, self.index.search_k_per_shard)
                kept = ~np.isin(ids, view.tombstoned)
                if chosen is not None:
                    allowed = chosen.allowed(ids[kept].tolist())
                    kept &= np.fromiter((chunk_id in allowed for chunk_id in ids.tolist()), bool, len(ids))
                ids, scores = ids[kept], scores[kept]
                if chosen is None or len(ids) >= k or asked >= items:
                    break
                asked = min(asked * FILTER_WIDENING, items)
        pending = view.pending
        if chosen is not None and len(pending):
            allowed = chosen.allowed(pending.tolist())
            pending = np.asarray([chunk_id for chunk_id in pending.tolist() if chunk_id in allowed], dtype=np.int64)
        if len(pending):
            pending_ids, vectors = self.store.embeddings.vectors_of(pending, model_id)
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
        "deletes_held": [held_dict(held) for held in store.holds.all()],
    }


def held_dict(held: Hold) -> dict:
    """A source's held deletes as `grace stats --json` and `grace status --json` show them."""
    return {
        "source": held.source,
        "deletes": held.deletes,
        "reason": held.reason,
        "since": held.since.isoformat(),
        "released": held.release,
        "described": held.describe(),
    }


def hit_dict(hit: SearchHit) -> dict:
    return asdict(hit)

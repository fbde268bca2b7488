"""Search answers honestly at the edges: k past the corpus, tombstones, pending vectors."""

from __future__ import annotations

import numpy as np

from grace.resources.index.search import Searcher, repair_query
from grace.resources.index.vector_index import ShardedIndex
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment
from tests.helpers.store_writes import purge_document

NOTES = 240  # over Annoy's leaf size (dimension + 2 = 66) per shard, so a query walks real trees


def test_k_past_the_corpus_returns_every_chunk_exactly_once(tmp_path, store_url):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2)
    for number in range(NOTES):
        deployment.drop(f"n{number:03d}.txt", f"note {number} about subject{number % 11} and term{number % 5}")
    deployment.sync()
    indexed_before = set(np.concatenate([deployment.index.load(shard).chunk_ids for shard in range(2)]).tolist())
    for number in range(0, 40, 2):  # edited: old chunks become tombstones, new ones pending
        deployment.drop(f"n{number:03d}.txt", f"note {number} rewritten about another subject entirely")
    for number in range(1, 20, 2):  # deleted: tombstones
        (deployment.inbox / f"n{number:03d}.txt").unlink()
    for number in range(NOTES, NOTES + 15):  # new: pending
        deployment.drop(f"n{number:03d}.txt", f"fresh note {number} about subject{number % 11}")
    deployment.sync(rebuild=False)
    model_id = deployment.embedder.model_id
    delta = deployment.store.index_delta
    searchable = set(np.concatenate([delta.embedded_chunk_ids(s, 2, model_id) for s in range(2)]).tolist())
    assert len(indexed_before - searchable) == 30 and len(searchable - indexed_before) == 35

    # Any budget (here the smallest a manifest allows) must still return everything asked for.
    index = ShardedIndex(deployment.manifest.index_dir, 2, trees=10, search_k=1)
    hits = Searcher(deployment.store, index, deployment.embedder).search("note about subject3", len(searchable) + 10)
    ids = [hit.chunk_id for hit in hits]
    assert len(ids) == len(set(ids)) == len(searchable) and set(ids) == searchable
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)


def test_lone_surrogates_are_replaced_and_reported():
    assert repair_query("whales") == ("whales", False)
    assert repair_query("caf\udce9 au lait") == ("caf\ufffd au lait", True)  # b"caf\xe9" from a Latin-1 argv
    assert repair_query("\udcff\udcfe") == ("\ufffd\ufffd", True)
    assert repair_query("x\ud800y \U0001f40b") == ("x\ufffdy \U0001f40b", True)


def test_a_chunk_removed_after_it_was_ranked_gives_its_place_to_the_next(tmp_path, store_url, monkeypatch):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=1)
    for number in range(5):
        deployment.drop(f"n{number}.txt", f"note {number} about otters and rivers")
    deployment.sync()
    searcher = Searcher(deployment.store, deployment.index, deployment.embedder)
    ranked_dense = Searcher._dense_ranked
    removed: list[str] = []

    def rank_then_remove_the_best(self, *args):
        ranked = ranked_dense(self, *args)
        if not removed:  # an ingest replaces the best chunk between the ranking and the text read
            [best] = self.store.texts.chunk_hits([ranked[0][0]]).values()
            document_id = deployment.store.ledger.documents_of("docs")[best.path].id
            purge_document(deployment.store, document_id)
            removed.append(best.path)
        return ranked

    monkeypatch.setattr(Searcher, "_dense_ranked", rank_then_remove_the_best)
    for mode in ("hybrid", "dense"):
        removed.clear()
        deployment.drop("again.txt", "note again about otters and rivers")  # something to remove each round
        deployment.sync()
        hits = searcher.search("otters and rivers", k=2, mode=mode)
        assert len(hits) == 2, mode
        assert removed[0] not in [hit.path for hit in hits], mode

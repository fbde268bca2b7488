"""Search reads only what changed since each shard's build; it must equal a pass over the shard.

Random edits, deletions, renames, restores, quarantines, partial ingests and rebuilds, checked
after every step against the whole-shard computation, an exact search, and lexical search
recomputed from every live chunk's text, on SQLite and PostgreSQL; and the same equality on
the real model, with both backends.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from dagster import AssetSelection, materialize

from grace.resources.index.search import Searcher
from grace.resources.index.shard_state import shard_views
from grace.resources.store import lexical
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment
from tests.helpers.lexical import brute_force_lexical, rounded

WORDS = [f"w{n}" for n in range(400)]


def exact_search(deployment: Deployment, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k best (chunk id, score) over every searchable vector, by brute force."""
    shards, model_id = deployment.manifest.index.shards, deployment.embedder.model_id
    ids = np.concatenate([deployment.store.index_delta.embedded_chunk_ids(s, shards, model_id) for s in range(shards)])
    found, vectors = deployment.store.embeddings.vectors_of(ids, model_id)
    if not len(found):
        return []
    scores = vectors @ vector
    best = np.argsort(-scores, kind="stable")[:k]
    return [(int(found[i]), float(scores[i])) for i in best]


def assert_search_is_exact(deployment: Deployment, queries: list[str], k: int = 5) -> None:
    searcher = Searcher(deployment.store, deployment.index, deployment.embedder)
    for query in queries:
        vector = deployment.embedder.encode([query])[0]
        expected = exact_search(deployment, vector, k)
        hits = searcher.search_vector(vector, k)
        assert [round(hit.score, 4) for hit in hits] == [round(score, 4) for _id, score in expected], query
        # Ranks must agree wherever scores differ; ties may come in either order.
        boundary = expected[-1][1] if expected else 0.0
        assert {h.chunk_id for h in hits if h.score > boundary + 1e-4} == {
            chunk_id for chunk_id, score in expected if score > boundary + 1e-4
        }, query


def assert_lexical_is_exact(deployment: Deployment, queries: list[str]) -> int:
    """Lexical search returns exactly what BM25 over every live chunk's text does; how many hits in all."""
    searcher = Searcher(deployment.store, deployment.index, deployment.embedder, "lexical")
    found = 0
    for query in queries:
        expected = brute_force_lexical(deployment.store, query)
        hits = searcher.search(query, k=1000)
        assert rounded([(hit.chunk_id, hit.score) for hit in hits]) == rounded(expected), query
        assert all(hit.lexical_rank == rank and hit.dense_rank is None for rank, hit in enumerate(hits, 1))
        found += len(hits)
    return found


def assert_views_match_a_full_pass(deployment: Deployment) -> tuple[int, int]:
    """Every shard's pending and tombstoned ids from the change log equal a pass over the shard."""
    store, index, model_id = deployment.store, deployment.index, deployment.embedder.model_id
    pending = tombstoned = 0
    for view in shard_views(store, index, model_id):
        searchable = store.index_delta.embedded_chunk_ids(view.shard, index.shards, model_id)
        in_index = view.index.chunk_ids if view.index is not None else np.empty(0, dtype=np.int64)
        assert view.pending.tolist() == np.setdiff1d(searchable, in_index).tolist(), f"shard {view.shard} pending"
        assert view.tombstoned.tolist() == np.setdiff1d(in_index, searchable).tolist(), f"shard {view.shard} tombs"
        assert view.total == len(searchable)
        pending, tombstoned = pending + len(view.pending), tombstoned + len(view.tombstoned)
    return pending, tombstoned


def text_of(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))


def test_random_changes_keep_the_change_log_equal_to_a_pass_over_each_shard(tmp_path, store_url, monkeypatch):
    monkeypatch.setattr(lexical, "CORPUS_STATS_SECONDS", 0.0)  # BM25's corpus figures, read afresh every query
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=3)
    lexical_hits = 0
    rng = random.Random(20261127)
    on_disk: dict[str, str] = {}
    removed: dict[str, str] = {}  # deleted from disk, may come back before or after its purge
    seen_pending = seen_tombstoned = 0
    for step in range(60):
        action = rng.choice(["add", "add", "edit", "delete", "restore", "rename", "quarantine", "ingest", "rebuild"])
        if action == "add" or not on_disk:
            name = f"f{step}.txt"
            on_disk[name] = text_of(rng)
            deployment.drop(name, on_disk[name])
        elif action == "edit":
            name = rng.choice(sorted(on_disk))
            on_disk[name] = text_of(rng)
            deployment.drop(name, on_disk[name])
        elif action == "delete":
            name = rng.choice(sorted(on_disk))
            removed[name] = on_disk.pop(name)
            (deployment.inbox / name).unlink()
        elif action == "restore" and removed:
            name = rng.choice(sorted(removed))
            on_disk[name] = removed.pop(name)
            deployment.drop(name, on_disk[name])
        elif action == "rename":
            old = rng.choice(sorted(on_disk))
            new = f"renamed{step}.txt"
            (deployment.inbox / old).rename(deployment.inbox / new)
            on_disk[new] = on_disk.pop(old)
        elif action == "quarantine":
            name = rng.choice(sorted(on_disk))
            on_disk.pop(name)
            deployment.drop(name, b"\x00\x01binary\xff")
        elif action == "rebuild":
            assert deployment.rebuild(rng.randrange(3)).success
        requests = deployment.tick()
        if action == "ingest" or rng.random() < 0.5:
            for request in requests[: rng.randint(0, len(requests))]:  # some shards wait for a later run
                assert deployment.ingest(int(request.partition_key)).success
        pending, tombstoned = assert_views_match_a_full_pass(deployment)
        seen_pending, seen_tombstoned = seen_pending + pending, seen_tombstoned + tombstoned
        assert_search_is_exact(deployment, [text_of(rng) for _ in range(3)])
        phrase = " ".join(rng.choice(WORDS) for _ in range(2))
        lexical_hits += assert_lexical_is_exact(deployment, [text_of(rng), f'"{phrase}"', rng.choice(WORDS)])
    assert seen_pending > 0 and seen_tombstoned > 0, "the walk never left a shard stale: it proves nothing"
    assert lexical_hits > 100, "lexical search found almost nothing: the comparison proves little"
    deployment.sync()
    assert assert_views_match_a_full_pass(deployment) == (0, 0)


@pytest.mark.parametrize("backend", ["torch", "onnx-int8"])
def test_search_equals_exact_search_with_pending_and_tombstoned_chunks_on_the_real_model(
    tmp_path, backend, onnx_model_cache
):
    embedder = EmbedderResource(backend=backend, cache_root=str(onnx_model_cache))
    deployment = Deployment(tmp_path, None, embedder, shards=2)
    topics = [
        "volcanoes erupting",
        "chess openings",
        "apple orchards",
        "river deltas",
        "jazz trumpet",
        "glacier retreat",
        "bread baking",
        "comet tails",
        "tide pools",
        "desert caravans",
    ]
    for n, topic in enumerate(topics):
        deployment.drop(f"t{n}.txt", f"A note about {topic}, number {n}, with a few more words on {topic}.")
    deployment.sync()
    for n in range(3):
        (deployment.inbox / f"t{n}.txt").unlink()  # tombstoned: in the index, no longer searchable
    for n, topic in enumerate(["volcanic ash", "chess endgames", "orchard pests"]):
        deployment.drop(f"new{n}.txt", f"Fresh words on {topic}.")  # pending: searchable, not indexed
    deployment.sync(rebuild=False)
    pending, tombstoned = assert_views_match_a_full_pass(deployment)
    assert pending == 3 and tombstoned == 3
    assert_search_is_exact(deployment, ["an eruption", "a queen sacrifice", "fruit trees", "music"], k=6)


def test_chunks_unsearchable_when_the_index_was_built_are_pending_once_searchable(tmp_path):
    deployment = Deployment(tmp_path, None, HashingEmbedderResource(), shards=1)
    deployment.drop("back.txt", "zebra crossing at the harbour")
    deployment.drop("keeper.txt", "a note that stays, so the folder never empties (held deletes)")
    deployment.sync()
    (deployment.inbox / "back.txt").unlink()
    deployment.tick()  # deleted, its chunks not purged yet: not searchable, still in the table
    deployment.drop("late.txt", "quokka photographs on an island")
    deployment.tick()
    chunked_only = materialize(
        [*deployment.defs.assets, *deployment.defs.asset_checks],
        selection=AssetSelection.assets("documents", "chunks"),
        partition_key="0",
        resources=deployment.resources,
        instance=deployment.instance,
    )
    assert chunked_only.success  # late.txt has chunks but no vectors yet, as after a killed run
    (deployment.inbox / "back.txt").write_text("zebra crossing at the harbour")  # back before the purge
    assert deployment.rebuild(0).success
    assert deployment.index.load(0).unsearchable_at_build.size >= 1
    deployment.sync(rebuild=False)
    pending, tombstoned = assert_views_match_a_full_pass(deployment)
    assert (pending, tombstoned) == (2, 0)
    assert [hit.path for hit in deployment.search("zebra harbour", k=1)] == ["back.txt"]
    assert [hit.path for hit in deployment.search("quokka island", k=1)] == ["late.txt"]

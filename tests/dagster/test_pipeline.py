"""The pipeline on real Dagster (sensor evaluation + materialize), on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment

TOPICS = {
    "cats.txt": "cats purr and nap in the sun on the windowsill",
    "finance.md": "quarterly revenue grew twelve percent on cloud sales",
    "garden/tomatoes.txt": "water tomato plants deeply and prune the suckers",
    "space.txt": "the rocket reached orbit and deployed two satellites",
}


@pytest.fixture
def deployment(tmp_path, store_url):
    return Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2)


def test_dropped_files_become_searchable_chunks(deployment):
    for name, text in TOPICS.items():
        deployment.drop(name, text)
    requests = deployment.sync()
    assert {request.tags["grace/origin"] for request in requests} == {"ingest"}
    assert sum(int(r.tags["grace/data_size_bytes"]) for r in requests) == sum(len(t) for t in TOPICS.values())
    stats = deployment.stats()["total"]
    assert stats["total_embeddings"] == 4 and stats["indexed_embeddings"] == 4
    assert stats["index_coverage"] == 1.0 and stats["pending"] == 0
    assert deployment.search("tomato plants prune")[0].path == "garden/tomatoes.txt"


def test_runs_are_requested_once_per_change(deployment):
    deployment.drop("a.txt", "alpha")
    first = deployment.tick()
    assert len(first) == 1 and first[0].partition_key in {"0", "1"}
    assert deployment.tick() == []  # nothing new: no second request
    deployment.drop("a.txt", "alpha beta")
    again = deployment.tick()
    assert len(again) == 1 and again[0].run_key != first[0].run_key


def test_bad_files_are_quarantined_and_never_block_the_rest(deployment):
    deployment.drop("good.txt", "a perfectly fine note about tomatoes")
    bad = {
        "binary.txt": b"\x00\x01\x02 not text",
        "latin1.txt": "caf\u00e9".encode("latin-1"),
        "empty.txt": b"",
        "blank.md": b"  \n\t ",
        "huge.txt": b"x" * 2000,  # the test manifest caps files at 1KB
    }
    snapshots = {}
    for name, content in bad.items():
        path = deployment.drop(name, content)
        snapshots[name] = (path.read_bytes(), path.stat().st_mtime_ns)
    deployment.sync()
    reasons = {path: reason for _source, path, reason in deployment.store.documents.quarantined()}
    assert set(reasons) == set(bad)
    assert "NUL byte" in reasons["binary.txt"]
    assert "not UTF-8" in reasons["latin1.txt"] and "offset 3" in reasons["latin1.txt"]
    assert "empty" in reasons["empty.txt"] and "whitespace" in reasons["blank.md"]
    assert "max_bytes" in reasons["huge.txt"]
    assert [hit.path for hit in deployment.search("tomatoes")] == ["good.txt"]
    for name, (content, mtime) in snapshots.items():  # the user's files are never touched
        path = deployment.inbox / name
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime


def test_fixed_file_leaves_quarantine(deployment):
    deployment.drop("note.txt", b"\xff\xfe broken")
    deployment.sync()
    assert deployment.store.documents.quarantined()
    deployment.drop("note.txt", "now it is proper text about rockets")
    deployment.sync()
    assert deployment.store.documents.quarantined() == []
    assert deployment.search("rockets")[0].path == "note.txt"


def test_pending_embeddings_are_searchable_before_any_index_exists(deployment):
    deployment.drop("space.txt", TOPICS["space.txt"])
    deployment.sync(rebuild=False)
    stats = deployment.stats()["total"]
    assert stats["pending"] == 1 and stats["indexed_embeddings"] == 0 and stats["index_coverage"] == 0.0
    assert deployment.search("rocket orbit satellites")[0].path == "space.txt"


def test_search_ranking_equals_exact_cosine(deployment):
    rng = np.random.default_rng(7)

    def random_note() -> str:
        return " ".join(f"word{n}" for n in rng.integers(0, 40, size=int(rng.integers(5, 30))))

    for i in range(40):
        deployment.drop(f"n{i:02d}.txt", random_note())
    deployment.sync()
    # a third of the corpus is pending (exact scan), the rest indexed (Annoy): both paths merge
    for i in range(40, 60):
        deployment.drop(f"n{i:02d}.txt", random_note())
    deployment.sync(rebuild=False)
    store, model = deployment.store, deployment.embedder
    ids = np.concatenate([store.index_delta.embedded_chunk_ids(s, 2, model.model_id) for s in range(2)])
    ids, vectors = store.embeddings.vectors_of(ids, model.model_id)
    query = "word3 word10 word17 word40"
    exact = vectors @ model.encode([query])[0]
    assert np.min(-np.diff(np.sort(exact)[::-1][:11])) > 1e-6, "ties would make the ranking ambiguous"
    expected = [int(ids[i]) for i in np.argsort(-exact, kind="stable")[:10]]
    hits = deployment.search(query, k=10, mode="dense")
    assert [hit.chunk_id for hit in hits] == expected
    assert np.allclose([hit.score for hit in hits], np.sort(exact)[::-1][:10], atol=1e-5)


def test_vector_index_materialization_reports_coverage_check(deployment):
    deployment.drop("cats.txt", TOPICS["cats.txt"])
    deployment.sync(rebuild=False)
    shard = next(s for s in range(2) if deployment.stats()["shards"][s]["total_embeddings"])
    result = deployment.rebuild(shard)
    checks = result.get_asset_check_evaluations()
    assert sorted((check.check_name, check.passed) for check in checks) == [
        ("index_covers_every_embedding", True),
        ("index_matches_store", True),
    ]
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["shard_index_coverage"].value == 1.0 and metadata["items"].value == 1

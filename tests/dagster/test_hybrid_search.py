"""Hybrid search through the real pipeline: ranks from both sides fused, phrases kept exactly, modes
from grace.yaml and per query, and the lexical index checked and repaired by the index's own runs,
on SQLite and PostgreSQL; and on the real model, an identifier dense search misses."""

from __future__ import annotations

import re

import pytest
from dagster import AssetSelection
from sqlalchemy import update

from grace import api
from grace.core.index_config import DENSE_WEIGHT
from grace.core.manifest import ManifestError, parse_manifest
from grace.resources.db.lexical_tables import lexical_chunks, lexical_terms
from grace.resources.index.fusion import FUSION_DEPTH, RRF_K, Fusion
from grace.resources.index.search import Searcher
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment

NOTES = {
    "pump.txt": "The pump stops with error E4711 when its filter is blocked; clean the filter.",
    "deploy.md": "Run the deploy script with --dry-run first, then run it for real.",
    "release.md": "A dry run of the release found nothing; the run itself went well.",
    "weather.txt": "Rain is likely tomorrow, with wind from the west and a dry evening.",
    "config.md": "read_config_file loads grace.yaml and checks every section of it.",
}


@pytest.fixture
def deployment(tmp_path, store_url) -> Deployment:
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource(), shards=2)
    for name, text in NOTES.items():
        deployment.drop(name, text)
    deployment.sync()
    return deployment


def test_each_hybrid_hit_carries_both_ranks_and_the_fused_score(deployment):
    query = "dry run of the deploy"
    dense_hits = deployment.search(query, k=FUSION_DEPTH, mode="dense")
    lexical_hits = deployment.search(query, k=FUSION_DEPTH, mode="lexical")
    dense, lexical = [hit.chunk_id for hit in dense_hits], [hit.chunk_id for hit in lexical_hits]
    hybrid = deployment.search(query, k=5)
    assert {hit.chunk_id for hit in hybrid} == set(dense) | set(lexical)
    for hit in hybrid:
        assert hit.dense_rank == (dense.index(hit.chunk_id) + 1 if hit.chunk_id in dense else None)
        assert hit.lexical_rank == (lexical.index(hit.chunk_id) + 1 if hit.chunk_id in lexical else None)
        # relative fusion: each side's scores scaled from its last (0) to its best (1), weighted 3:1
        expected = sum(
            weight * (side[rank - 1].score - side[-1].score) / (side[0].score - side[-1].score)
            for weight, side, rank in (
                (DENSE_WEIGHT, dense_hits, hit.dense_rank),
                (1 - DENSE_WEIGHT, lexical_hits, hit.lexical_rank),
            )
            if rank is not None
        )
        assert hit.score == pytest.approx(expected)
        assert (
            hit.found_by
            == {(True, True): "both", (True, False): "dense", (False, True): "lexical"}[
                (hit.dense_rank is not None, hit.lexical_rank is not None)
            ]
        )
    assert [hit.score for hit in hybrid] == sorted((hit.score for hit in hybrid), reverse=True)
    cosine = {hit.chunk_id: hit.score for hit in deployment.search(query, k=50, mode="dense")}
    assert [hit.similarity for hit in hybrid] == pytest.approx([cosine[hit.chunk_id] for hit in hybrid], abs=1e-5)
    assert all(hit.similarity is None for hit in deployment.search(query, k=5, mode="lexical"))
    assert "weather.txt" not in [hit.path for hit in deployment.search(query, k=5, mode="lexical")][:1]


def test_a_chunk_not_yet_embedded_is_found_lexically_without_a_similarity(deployment):
    deployment.drop("fresh.txt", "The valve V-2231 leaks at night.")
    [request] = deployment.tick()
    deployment._materialize(AssetSelection.assets("documents", "chunks"), int(request.partition_key))
    [hit] = [hit for hit in deployment.search("V-2231", k=5) if hit.path == "fresh.txt"]
    assert hit.found_by == "lexical" and hit.similarity is None, "live, but no vector for it yet"


def test_a_quoted_phrase_returns_only_chunks_that_hold_it(deployment):
    for mode in ("hybrid", "lexical"):
        assert [hit.path for hit in deployment.search('"dry run"', k=5, mode=mode)] == ["release.md"], mode
    assert [hit.path for hit in deployment.search('"run dry"', k=5, mode="lexical")] == []
    assert len(deployment.search('"run dry"', k=5, mode="dense")) == 5, "dense search ignores quotes"


@pytest.mark.parametrize(
    "query, path", [("E4711", "pump.txt"), ("--dry-run", "deploy.md"), ("read_config_file", "config.md")]
)
def test_identifiers_come_first_in_lexical_and_hybrid_search(deployment, query, path):
    assert deployment.search(query, k=1, mode="lexical")[0].path == path
    assert deployment.search(query, k=1)[0].path == path


def test_search_mode_comes_from_grace_yaml_and_an_unknown_one_is_refused(tmp_path, deployment):
    (tmp_path / "lexical").mkdir()
    lexical_only = Deployment(tmp_path / "lexical", None, HashingEmbedderResource(), shards=1, search_mode="lexical")
    lexical_only.drop("pump.txt", NOTES["pump.txt"])
    lexical_only.sync()
    [hit] = lexical_only.search("filter blocked", k=5)
    assert hit.found_by == "lexical" and hit.dense_rank is None
    with pytest.raises(ValueError, match="unknown search mode 'semantic': use one of hybrid, dense, lexical"):
        deployment.search("pump", mode="semantic")
    with pytest.raises(ManifestError) as refused:
        parse_manifest("search: {mode: semantic}\n", "grace.yaml", tmp_path)
    assert "search.mode" in str(refused.value) and "'hybrid', 'dense' or 'lexical'" in str(refused.value)


def test_grace_yaml_chooses_rank_fusion_and_its_weights(deployment):
    text = (deployment.root / "grace.yaml").read_text() + "search:\n  fusion: rrf\n  dense_weight: 0.5\n"
    fusion = Fusion.of(parse_manifest(text, "grace.yaml", deployment.root).search)
    searcher = Searcher(deployment.store, deployment.index, deployment.embedder, fusion=fusion)
    hits = searcher.search("dry run of the deploy", k=5)
    assert any(hit.found_by == "both" for hit in hits)
    for hit in hits:
        ranks = [rank for rank in (hit.dense_rank, hit.lexical_rank) if rank is not None]
        assert hit.score == pytest.approx(sum(0.5 / (RRF_K + rank) for rank in ranks))
    for bad, field in (("{fusion: borda}", "search.fusion"), ("{dense_weight: 1.5}", "search.dense_weight")):
        with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
            parse_manifest(f"search: {bad}\n", "grace.yaml", deployment.root)


def test_the_python_api_takes_a_mode(deployment):
    config = deployment.root / "grace.yaml"
    [hit] = api.search("E4711", k=1, config=config, mode="lexical")
    assert hit.path == "pump.txt" and hit.found_by == "lexical"
    with pytest.raises(ValueError, match="unknown search mode"):
        api.search("E4711", config=config, mode="bm25")


def test_index_matches_store_fails_on_wrong_postings_and_a_rebuild_repairs_them(deployment):
    assert deployment.check().passed
    with deployment.store.writer.begin() as connection:
        connection.execute(update(lexical_terms).values(frequency=lexical_terms.c.frequency + 1))
    failed = deployment.check()
    differing = re.findall(r"the lexical postings of (\d+) chunks differ from their text", failed.description)
    assert not failed.passed and sum(map(int, differing)) == 5, failed.description
    for shard in range(2):
        assert deployment.rebuild(shard).success
    assert deployment.check().passed
    assert deployment.search("E4711", k=1, mode="lexical")[0].path == "pump.txt"


def test_chunks_cut_before_the_lexical_index_are_indexed_by_the_next_rebuild(deployment):
    with deployment.store.writer.begin() as connection:  # as a store migrated from release 0.6 holds them
        connection.execute(lexical_terms.delete())
        connection.execute(lexical_chunks.delete())
    assert deployment.search("E4711", k=1, mode="lexical") == []
    stale = deployment.check()
    without = re.findall(r"(\d+) chunks without postings", stale.description)
    assert stale.passed and sum(map(int, without)) == 5, stale.description
    for shard in range(2):
        result = deployment.rebuild(shard)
        assert result.success
    assert deployment.store.lexical.missing() == 0
    assert deployment.search("E4711", k=1, mode="lexical")[0].path == "pump.txt"


def test_hybrid_finds_an_identifier_the_real_model_misses_and_keeps_paraphrases(tmp_path, onnx_model_cache):
    embedder = EmbedderResource(backend="onnx-int8", cache_root=str(onnx_model_cache))
    deployment = Deployment(tmp_path, None, embedder, shards=2, embedding_backend="onnx-int8")
    notes = {
        "whales.txt": "Blue whales are the largest animals ever known to have lived.",
        "trains.md": "The night train to Vienna leaves from platform nine at 22:40.",
        "pump.txt": "Fault XQ-5521 on the pump: the filter is blocked. Clean it and restart.",
        "garden.md": "Prune tomato plants in summer so that the fruit ripens in the sun.",
        "errors.md": "Error codes are listed in the manual; each names the part that failed.",
    }
    for name, text in notes.items():
        deployment.drop(name, text)
    deployment.sync()
    dense = [hit.path for hit in deployment.search("XQ-5521", k=5, mode="dense")]
    hybrid = deployment.search("XQ-5521", k=5)
    assert hybrid[0].path == "pump.txt" and hybrid[0].lexical_rank == 1, (dense, [hit.path for hit in hybrid])
    for query, path in [("enormous sea mammals", "whales.txt"), ("when does the railway leave", "trains.md")]:
        assert deployment.search(query, k=1, mode="dense")[0].path == path
        assert deployment.search(query, k=1)[0].path == path, query

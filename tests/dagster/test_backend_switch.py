"""Switching the embedding backend in grace.yaml re-embeds every chunk, says so, and never mixes vectors."""

from __future__ import annotations

from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.harness import Deployment

NOTES = {
    "volcano.txt": "Lava poured from the erupting volcano and ash clouds closed the airport.",
    "chess.txt": "She sacrificed her queen to force checkmate in three moves.",
    "orchard.txt": "The apple trees in the orchard blossomed early after a mild spring.",
}


def ingest_everything(deployment: Deployment) -> list:
    results = [deployment.ingest(int(request.partition_key)) for request in deployment.tick()]
    assert results and all(result.success for result in results)
    return results


def test_switching_to_onnx_reembeds_says_so_and_searches_with_the_new_vectors(tmp_path, onnx_model_cache):
    torch = Deployment(tmp_path, None, EmbedderResource(backend="torch"), shards=1)
    for name, text in NOTES.items():
        torch.drop(name, text)
    ingest_everything(torch)
    assert torch.stats()["total"]["total_embeddings"] == len(NOTES)

    # The same state dir, as after editing embedding.backend: the first tick's full scan finds the shard's
    # chunks without vectors of the new model and requests its run.
    onnx = Deployment(tmp_path, None, EmbedderResource(backend="onnx-int8", cache_root=str(onnx_model_cache)), shards=1)
    assert onnx.embedder.model_id != torch.embedder.model_id
    switching = onnx.stats()
    assert switching["model_id"] == torch.embedder.model_id, "torch answers until onnx-int8 has every vector"
    assert switching["reembedding"]["chunks_left"] == len(NOTES)
    [result] = ingest_everything(onnx)
    events = result.get_asset_materialization_events()
    [embedded] = [event for event in events if event.asset_key.path == ["embeddings"]]
    assert embedded.materialization.metadata["reembedded_from_other_models"].value == len(NOTES)
    logged = [entry.user_message for entry in onnx.instance.all_logs(result.run_id)]
    assert any("re-embedding 3 chunks" in message and torch.embedder.model_id in message for message in logged)
    assert onnx.stats()["total"]["total_embeddings"] == len(NOTES)
    assert onnx.search("an eruption disrupted flights", k=1)[0].path == "volcano.txt"

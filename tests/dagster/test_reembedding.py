"""Changing the model or the chunking never blanks search: old vectors answer until the new ones are done."""

from __future__ import annotations

from dagster import AssetSelection, materialize

from grace.cli.main import main
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment

NOTES = {
    "volcano.txt": "Lava poured from the erupting volcano and ash clouds closed the airport for days.",
    "chess.txt": "She sacrificed her queen to force checkmate in three moves at the club final.",
    "orchard.txt": "The apple trees in the orchard blossomed early after a mild and rainy spring.",
    "desert.txt": "A caravan of camels crossed the dunes by night to avoid the heat of the desert.",
}
QUERIES = {"an eruption grounded flights": "volcano.txt", "a queen sacrifice": "chess.txt"}


def chunk_and_stage_only(deployment: Deployment, shard: int) -> None:
    """The documents and chunks steps of a shard's ingest run, as if it were killed before embedding."""
    result = materialize(
        [*deployment.defs.assets, *deployment.defs.asset_checks],
        selection=AssetSelection.assets("documents", "chunks"),
        partition_key=str(shard),
        resources=deployment.resources,
        instance=deployment.instance,
    )
    assert result.success


def assert_answers(deployment: Deployment) -> None:
    for query, path in QUERIES.items():
        hits = deployment.search(query, k=1)
        assert [hit.path for hit in hits] == [path], f"{query!r} while {deployment.stats()['reembedding']}"


def test_a_backend_switch_keeps_answering_from_the_old_model_until_every_chunk_is_reembedded(
    tmp_path, onnx_model_cache, capsys
):
    torch = Deployment(tmp_path, None, EmbedderResource(backend="torch"), shards=2)
    for name, text in NOTES.items():
        torch.drop(name, text)
    torch.sync()
    before = {query: [(hit.path, round(hit.score, 5)) for hit in torch.search(query, k=4)] for query in QUERIES}

    onnx_resource = EmbedderResource(backend="onnx-int8", cache_root=str(onnx_model_cache))
    onnx = Deployment(tmp_path, None, onnx_resource, shards=2)
    stats = onnx.stats()
    assert stats["model_id"] == torch.embedder.model_id
    assert stats["reembedding"] == {"target_model_id": onnx.embedder.model_id, "chunks_left": 4, "chunks": 4}
    assert stats["total"]["index_coverage"] == 1.0, "the torch index still serves"
    assert {q: [(h.path, round(h.score, 5)) for h in onnx.search(q, k=4)] for q in QUERIES} == before

    requests = onnx.tick()  # the first full scan requests every shard: their chunks lack onnx vectors
    assert sorted(int(request.partition_key) for request in requests) == [0, 1]
    shard_with_most = max(range(2), key=lambda s: onnx.stats()["shards"][s]["chunks"])
    assert onnx.ingest(shard_with_most).success
    halfway = onnx.stats()
    assert halfway["model_id"] == torch.embedder.model_id
    assert 0 < halfway["reembedding"]["chunks_left"] < 4
    assert_answers(onnx)
    assert main(["stats", "-c", str(tmp_path / "grace.yaml")]) == 0
    printed = capsys.readouterr().out
    assert f"re-embedding for {onnx.embedder.model_id}: {halfway['reembedding']['chunks_left']} of 4 chunks" in printed

    assert onnx.ingest(1 - shard_with_most).success  # the last chunk re-embedded: onnx-int8 serves
    done = onnx.stats()
    assert done["model_id"] == onnx.embedder.model_id and done["reembedding"] is None
    assert_answers(onnx)  # an exact scan of the new vectors until the shards are rebuilt
    for shard in range(2):
        assert onnx.rebuild(shard).success
    assert onnx.stats()["total"]["index_coverage"] == 1.0
    assert_answers(onnx)


def test_a_chunking_change_keeps_every_document_searchable_while_it_is_rechunked(tmp_path):
    words = {name: " ".join(f"{name[:-4]}{n}" for n in range(60)) for name in NOTES}
    coarse = Deployment(tmp_path, None, HashingEmbedderResource(), shards=2)
    for name, text in words.items():
        coarse.drop(name, text)
    coarse.sync()
    chunks_before = coarse.stats()["total"]["chunks"]

    fine = Deployment(tmp_path, None, HashingEmbedderResource(), shards=2, max_tokens=32)
    requests = fine.tick()
    assert sorted(int(request.partition_key) for request in requests) == [0, 1], "the change requests its own runs"

    def every_document_found() -> None:
        for name in NOTES:
            assert name in {hit.path for hit in fine.search(f"{name[:-4]}7 {name[:-4]}42", k=100)}, name

    for shard in range(2):
        chunk_and_stage_only(fine, shard)  # new chunks cut and staged, not embedded: old ones still serve
        every_document_found()
        assert fine.ingest(shard).success
        every_document_found()
    assert fine.stats()["total"]["chunks"] > chunks_before
    fine.sync()
    assert fine.stats()["total"]["index_coverage"] == 1.0
    every_document_found()

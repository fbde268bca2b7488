"""Nothing is silent, on the real model: files beside the documents that match no pattern show in `grace stats`,
`grace status` (both with --json) and index_status, counted by the folder sensor's full scan."""

from __future__ import annotations

import json

import pytest
from dagster import AssetKey, AssetMaterialization, build_sensor_context

from grace.cli.main import main
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.harness import Deployment

NOT_READ = {"docs": {".pptx": 2, ".xlsx": 1, ".pdf": 1}}
WORDS = "2 .pptx, 1 .xlsx (no reader); 1 .pdf (not in patterns)"


@pytest.fixture
def deployment(tmp_path, store_url):
    deployment = Deployment(tmp_path, store_url, EmbedderResource(), shards=1)  # the real model
    deployment.drop("whales.txt", "Blue whales are the largest animals ever known to have lived.")
    for name in ["plan.pptx", "archive/Old.PPTX", "budget.xlsx", "manual.pdf", ".~lock.plan.pptx#"]:
        deployment.drop(name, b"PK\x03\x04 not read")
    deployment.sync()  # the sensor's first tick scans the whole folder
    return deployment


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


def index_status_metadata(deployment: Deployment) -> dict:
    """index_status as one real tick of the index_freshness sensor reports it."""
    context = build_sensor_context(instance=deployment.instance, resources=deployment.resources)
    result = deployment.defs.resolve_sensor_def("index_freshness")(context)
    [status] = [event for event in result.asset_events if isinstance(event, AssetMaterialization)]
    assert status.asset_key == AssetKey("index_status")
    return {name: value.value for name, value in status.metadata.items()}


def test_files_matching_no_pattern_are_counted_and_shown_everywhere(deployment, capsys):
    config = str(deployment.root / "grace.yaml")
    [hit] = deployment.search("the biggest creature in the ocean", k=1)
    assert hit.path == "whales.txt", "the real model found the one file read"

    code, out = run(capsys, "stats", "--json", "-c", config)
    assert code == 0 and json.loads(out)["not_read"] == NOT_READ
    code, out = run(capsys, "stats", "-c", config)
    assert code == 0 and out.splitlines()[-1] == f"not read in docs: {WORDS}"

    code, out = run(capsys, "status", "--json", "-c", config)
    assert code == 0 and json.loads(out)["store"]["not_read"] == NOT_READ
    code, out = run(capsys, "status", "-c", config)
    assert code == 0 and f"not read   docs: {WORDS}" in out.splitlines()

    status = index_status_metadata(deployment)
    assert status["files_not_read"] == 4 and status["not_read"] == f"docs: {WORDS}"


def test_removed_files_stop_being_counted_at_the_next_full_scan(deployment, capsys):
    for name in ["plan.pptx", "archive/Old.PPTX", "budget.xlsx", "manual.pdf"]:
        (deployment.inbox / name).unlink()
    deployment.cursors["watch_docs"] = None  # a fresh cursor: the next tick scans the whole folder again
    deployment.sync()
    code, out = run(capsys, "stats", "--json", "-c", str(deployment.root / "grace.yaml"))
    assert code == 0 and json.loads(out)["not_read"] == {}
    status = index_status_metadata(deployment)
    assert status["files_not_read"] == 0 and status["not_read"].startswith("none")

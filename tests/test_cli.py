"""The grace command on the real model: search, stats, and hostile arguments."""

from __future__ import annotations

import json

import pytest

from grace.cli import main
from grace.resources.embedder import EmbedderResource
from tests.harness import Deployment


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    deployment = Deployment(root, None, EmbedderResource(), shards=2)
    deployment.drop("whales.txt", "Blue whales are the largest animals ever known to have lived.")
    deployment.drop("trains.md", "The night train to Vienna leaves from platform nine at 22:40.")
    deployment.drop("broken.txt", b"\xc3\x28 invalid")
    deployment.sync()
    return deployment


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_search_prints_ranked_hits(deployment, capsys):
    config = str(deployment.root / "grace.yaml")
    code, out, _ = run(capsys, "search", "enormous sea mammals", "-k", "1", "-c", config)
    assert code == 0 and "docs/whales.txt #0" in out and out.startswith(" 1.")
    code, out, _ = run(capsys, "search", "railway departure time", "--json", "-c", config)
    hits = json.loads(out)
    assert code == 0 and hits[0]["path"] == "trains.md" and set(hits[0]) >= {"path", "text", "score"}
    assert hits[0]["score"] > hits[1]["score"]


def test_stats_reports_every_figure_per_shard_and_total(deployment, capsys):
    code, out, _ = run(capsys, "stats", "--json", "-c", str(deployment.root / "grace.yaml"))
    stats = json.loads(out)
    assert code == 0 and len(stats["shards"]) == 2
    total = stats["total"]
    assert total["total_embeddings"] == 2 and total["indexed_embeddings"] == 2 and total["pending"] == 0
    assert total["index_coverage"] == 1.0 and total["documents_quarantined"] == 1
    assert sum(row["total_embeddings"] for row in stats["shards"]) == 2
    assert stats["quarantined"] == [
        {"source": "docs", "path": "broken.txt", "reason": stats["quarantined"][0]["reason"]}
    ]
    assert "not UTF-8" in stats["quarantined"][0]["reason"]
    code, out, _ = run(capsys, "stats", "-c", str(deployment.root / "grace.yaml"))
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("shard") and lines[-2].split()[0] == "all"
    assert lines[-1].startswith("quarantined docs/broken.txt: not UTF-8")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "x", "-k", "0"], "must be at least 1"),
        (["search", "x", "-k", "ten"], "not a whole number"),
        (["search"], "required"),
        (["stats", "--bogus"], "unrecognized arguments"),
        (["dev", "--port", "99999"], "at most 65535"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(capsys, args, message):
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_empty_query_and_missing_manifest(capsys, tmp_path):
    code, _, err = run(capsys, "search", "   ", "-c", str(tmp_path / "grace.yaml"))
    assert code == 2 and "query is empty" in err
    code, _, err = run(capsys, "stats", "-c", str(tmp_path / "absent.yaml"))
    assert code == 2 and "absent.yaml" in err and "not found" in err

"""The grace command on the real model: search, stats, and hostile arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from grace.api import search
from grace.cli.main import main
from grace.resources.wiring.dagster_resources import EmbedderResource
from tests.helpers.harness import Deployment
from tests.helpers.postgres import fresh_postgres_database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def deployment(request, tmp_path_factory):
    """One synced deployment per backend, shared by the module's tests."""
    root = tmp_path_factory.mktemp("cli")
    with ExitStack() as cleanup:
        store_url = None
        if request.param == "postgresql":
            store_url = cleanup.enter_context(fresh_postgres_database(request.getfixturevalue("postgres_admin_url")))
        deployment = Deployment(root, store_url, EmbedderResource(), shards=2)
        deployment.drop("whales.txt", "Blue whales are the largest animals ever known to have lived.")
        deployment.drop("trains.md", "The night train to Vienna leaves from platform nine at 22:40.")
        deployment.drop("broken.txt", b"\xc3\x28 invalid")
        deployment.sync()
        yield deployment


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


def test_search_takes_a_mode_and_refuses_an_unknown_one(deployment, capsys):
    config = str(deployment.root / "grace.yaml")
    code, out, _ = run(capsys, "search", "22:40", "--mode", "lexical", "--json", "-c", config)
    [hit] = json.loads(out)
    assert code == 0 and hit["path"] == "trains.md" and hit["found_by"] == "lexical" and hit["dense_rank"] is None
    code, out, _ = run(capsys, "search", "zeppelin", "--mode", "lexical", "-c", config)
    assert code == 0 and out.startswith("no results (lexical search)")
    code, out, _ = run(capsys, "search", "enormous sea mammals", "-k", "1", "-c", config)
    assert code == 0 and "docs/whales.txt #0  [" in out, "the text output names which side found each hit"
    with pytest.raises(SystemExit) as refused:
        main(["search", "whales", "--mode", "semantic", "-c", config])
    assert refused.value.code == 2
    assert "argument --mode: invalid choice: 'semantic'" in capsys.readouterr().err


def test_search_takes_filters_and_names_a_bad_one(deployment, capsys):
    config = str(deployment.root / "grace.yaml")
    code, out, _ = run(capsys, "search", "platform", "--type", "md", "--json", "-c", config)
    assert code == 0 and [hit["path"] for hit in json.loads(out)] == ["trains.md"]
    code, out, _ = run(capsys, "search", "platform", "--path", "*.txt", "--mode", "lexical", "-c", config)
    assert code == 0 and out.startswith("no results passing the filter (lexical search)")
    for flags, message in [
        (["--page", "0"], "grace search: --page: Input should be greater than or equal to 1"),
        (["--modified-before", "tomorrow"], "grace search: --modified-before: Input should be a valid datetime"),
        (["--source", "doc"], "grace search: --source: no source named 'doc'; grace.yaml names docs"),
        (["--path", "/etc/*"], "grace search: --path: is a glob relative to the source folder"),
    ]:
        code, _out, err = run(capsys, "search", "platform", *flags, "-c", config)
        assert code == 2 and err.startswith(message), (flags, err)


def test_stats_reports_every_figure_per_shard_and_total(deployment, capsys):
    code, out, _ = run(capsys, "stats", "--json", "-c", str(deployment.root / "grace.yaml"))
    stats = json.loads(out)
    assert code == 0 and len(stats["shards"]) == 2
    total = stats["total"]
    assert total["total_embeddings"] == 2 and total["indexed_embeddings"] == 2 and total["pending"] == 0
    assert total["index_coverage"] == 1.0 and total["documents_quarantined"] == 1
    assert sum(row["total_embeddings"] for row in stats["shards"]) == 2
    [quarantined] = stats["quarantined"]
    assert set(quarantined) == {"source", "path", "reason"}
    assert (quarantined["source"], quarantined["path"]) == ("docs", "broken.txt")
    assert "not UTF-8" in quarantined["reason"]
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


GRACE = [sys.executable, "-m", "grace.cli.main"]
REPOSITORY = Path(__file__).resolve().parents[3]


def test_query_bytes_that_are_not_utf8_are_replaced_with_a_notice(tmp_path):
    # No sources: the query still goes through the real tokenizer, which rejects lone surrogates.
    config = tmp_path / "grace.yaml"
    config.write_text("sources: []\n")
    done = subprocess.run(
        [*GRACE, "search", b"\xff\xfe", "-c", str(config)], capture_output=True, cwd=REPOSITORY, timeout=180
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr and b"not valid UTF-8" in done.stderr
    assert done.stdout.startswith(b"no results")


def test_python_api_replaces_lone_surrogates_with_a_warning(deployment):
    with pytest.warns(UnicodeWarning, match="not valid Unicode"):
        hits = search("enormous sea mammals \udcff", k=1, config=deployment.root / "grace.yaml")
    assert [hit.path for hit in hits] == ["whales.txt"]


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    config = tmp_path / "grace.yaml"
    config.write_text("sources: [{name: docs, path: inbox}]\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before grace writes a byte, as with a fast `| head -1`
    try:
        done = subprocess.run(
            [*GRACE, "stats", "-c", str(config)], stdout=write_end, stderr=subprocess.PIPE, cwd=REPOSITORY, timeout=120
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert b"Traceback" not in done.stderr and b"BrokenPipeError" not in done.stderr, done.stderr


def test_an_unreachable_store_is_a_message_not_a_traceback(capsys, tmp_path):
    config = tmp_path / "grace.yaml"
    config.write_text("store: postgresql+psycopg2://postgres@127.0.0.1:1/nothing_listens_here\n")
    code, _, err = run(capsys, "stats", "-c", str(config))
    assert code == 1 and "grace: the store failed: (psycopg2.OperationalError)" in err
    assert "check `store:` in grace.yaml" in err and "Traceback" not in err

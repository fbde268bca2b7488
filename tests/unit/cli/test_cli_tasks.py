"""`grace submit`, `grace task show|list` and grace.api, on SQLite and PostgreSQL (stats: test_instance.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from dagster import AssetSelection, DagsterInstance, build_sensor_context, materialize

from grace import api
from grace.cli.main import main
from grace.core.manifest import load_manifest
from grace.core.task_model import TaskRejected, task_run_config, task_run_tags
from grace.deploy.instance import render_instance
from grace.pipelines import build_pipelines
from grace.pipelines.task_jobs import build_task_jobs
from grace.resources.store.taskbook import QUEUED, RECEIVED, STARTED, SUCCEEDED
from grace.resources.tasks.inbox import ENVELOPE_BYTES
from grace.resources.wiring.dagster_resources import EmbedderResource, build_resources
from grace.sensors.folder import build_folder_sensor
from grace.sensors.task_lifecycle import build_task_status_sensor
from tests.helpers.harness import ensure_key_file
from tests.helpers.task_cli import PAYLOAD_CAP, run

REPOSITORY = Path(__file__).resolve().parents[3]
SEED_INTENT = {"intent_id": "test_intent", "goal": "Test goal", "domain": "test", "sla_ms": 30000, "priority": "normal"}


# --- grace submit: accepted --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "payload", "handler"),
    [
        ("ingest", {"title": "Q3 notes", "content": "Revenue rose.", "path": "notes/q3.md"}, "ingest"),
        ("search", {"query": "whales", "k": 3}, "search"),
        ("reindex", {"shards": [1]}, "reindex"),
        ("echo", {"message": "hello"}, "echo"),
        ("test", {"goal": "a seed test intent's goal"}, "search"),
    ],
)
def test_submit_accepts_each_builtin_type_and_a_project_handler(config, book, capsys, kind, payload, handler):
    code, out, err = run(capsys, "submit", kind, "--payload", json.dumps(payload), "-c", config)
    assert (code, err) == (0, "")
    task_id = out.strip()
    record = book.get(task_id)
    assert (record.type, record.handler, record.origin, record.status) == (kind, handler, "cli", RECEIVED)
    assert (record.priority, record.sla_ms, record.submitted_via) == (0, 30000, "cli")
    assert json.loads(record.payload) == payload


def test_submit_sets_origin_priority_sla_and_id_and_prints_json(config, book, capsys):
    args = ["--origin", "partner", "--priority", "critical", "--sla-ms", "1500", "--task-id", "job-7"]
    code, out, _ = run(capsys, "submit", "search", "--payload", '{"query": "x"}', *args, "--json", "-c", config)
    shown = json.loads(out)
    assert code == 0 and shown == book.get("job-7").as_dict()
    assert (shown["origin"], shown["priority"], shown["sla_ms"], shown["status"]) == ("partner", 20, 1500, RECEIVED)
    assert shown["data_size_bytes"] == len(b'{"query":"x"}')
    code, _, _ = run(capsys, "submit", "search", "--payload", '{"query": "y"}', "--priority", "-100", "-c", config)
    assert code == 0 and {record.priority for record in book.with_status([RECEIVED])} == {20, -100}


def test_the_seed_intent_submitted_as_a_file_is_a_task_of_origin_intent(config, book, capsys, tmp_path):
    document = tmp_path / "intent.json"
    document.write_text(json.dumps(SEED_INTENT, indent=2))
    code, out, err = run(capsys, "submit", "--file", str(document), "-c", config)
    assert (code, out, err) == (0, "test_intent\n", "")
    record = book.get("test_intent")
    assert (record.origin, record.type, record.handler, record.sla_ms) == ("intent", "test", "search", 30000)
    assert json.loads(record.payload)["goal"] == "Test goal"


def test_payload_from_a_file(config, book, capsys, tmp_path):
    payload = tmp_path / "payload.json"
    payload.write_text('{\n  "message": "from a file ✓"\n}\n', encoding="utf-8")
    code, out, _ = run(capsys, "submit", "echo", "--payload", f"@{payload}", "-c", config)
    assert code == 0 and json.loads(book.get(out.strip()).payload) == {"message": "from a file ✓"}


# --- grace submit: rejected, with the field named ------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["search", "--payload", '{"query": "x"'], "--payload: malformed JSON at line 1 column 14"),
        (["search", "--payload", '{"query":\n "x",}'], "--payload: malformed JSON at line 2 column 6"),
        (["search", "--payload", "[1, 2]"], "--payload: must be a JSON object ({...}), not list"),
        (["search", "--payload", '{"query": NaN}'], "--payload: NaN is not JSON"),
        (["search", "--payload", "{}"], "payload.query: is required"),
        (["echo", "--payload", '{"message": 5}'], "payload.message: Input should be a valid string"),
        (["echo", "--payload", '{"message": "x", "colour": 1}'], "payload.colour: is not a known field"),
        (["reindex", "--payload", '{"shards": [9]}'], "payload.shards: no shard [9]: grace.yaml has 2 shards"),
        (["translate"], "type: unknown task type 'translate'; grace.yaml routes: echo, ingest, reindex, search, test"),
        (["search", "--origin", "bad origin"], "origin: String should match pattern"),
        (["search", "--task-id", "../etc"], "task_id: String should match pattern"),
        (["echo", "--payload", json.dumps({"message": "x" * 500})], "payload: is 514 bytes of canonical JSON"),
        (
            ["search", "--payload", '{"query": "x"}', "--priority", "101"],
            "priority: 101 is out of range; use -100..100",
        ),
        (["search", "--payload", '{"query": "x"}', "--priority", "-101"], "priority: -101 is out of range"),
        (["search", "--payload", '{"query": "x"}', "--sla-ms", "0"], "sla_ms: Input should be greater than or equal"),
        (["search", "--payload", '{"query": "x"}', "--sla-ms", "86400001"], "sla_ms: Input should be less than or"),
        (
            ["ingest", "--payload", '{"title": "t", "content": "c", "path": "../../etc/cron.md"}'],
            "payload.path: '../../etc/cron.md' is outside the watched roots",
        ),
        (
            ["ingest", "--payload", '{"title": "t", "content": "c", "path": "/etc/cron.md"}'],
            "payload.path: '/etc/cron.md' is outside the watched roots",
        ),
        (
            ["ingest", "--payload", '{"title": "t", "content": "c", "source": "elsewhere"}'],
            "payload.source: unknown source 'elsewhere'; grace.yaml has: docs",
        ),
    ],
)
def test_bad_input_is_rejected_with_exit_2_naming_the_field(config, book, capsys, args, expected):
    code, out, err = run(capsys, "submit", *args, "-c", config)
    assert code == 2 and out == ""
    assert f"grace submit: {expected}" in err, err
    assert all(line.startswith("grace submit: ") for line in err.splitlines())
    assert book.counts_by_status() == {}  # nothing half-accepted


def test_a_duplicate_task_id_is_rejected_and_the_first_task_is_kept(config, book, capsys):
    assert run(capsys, "submit", "echo", "--payload", '{"message": "first"}', "--task-id", "dup", "-c", config)[0] == 0
    code, _, err = run(capsys, "submit", "echo", "--payload", '{"message": "second"}', "--task-id", "dup", "-c", config)
    assert code == 2 and "grace submit: task_id: 'dup' is already taken by another task" in err
    assert json.loads(book.get("dup").payload) == {"message": "first"}
    assert book.counts_by_status() == {RECEIVED: 1}


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "absent.json", "cannot read it: No such file or directory"),
        (lambda d: d, "is not a regular file"),
        (lambda d: write_bytes(d / "latin1.json", b'{"message": "caf\xe9"}'), "is not UTF-8 text (byte 16)"),
        (lambda d: write_bytes(d / "big.json", b" " * PAYLOAD_CAP + b"{}"), f"is over {PAYLOAD_CAP} bytes"),
        (lambda d: write_bytes(d / "list.json", b"[]"), "must be a JSON object ({...}), not list"),
        (lambda d: write_bytes(d / "broken.json", b'{"message": '), "malformed JSON at line 1 column 13"),
    ],
    ids=["missing", "directory", "not-utf8", "too-big", "not-object", "malformed"],
)
def test_bad_payload_files_are_rejected_naming_the_file(config, book, capsys, tmp_path, make, expected):
    path = make(tmp_path)
    code, _, err = run(capsys, "submit", "echo", "--payload", f"@{path}", "-c", config)
    assert code == 2 and f"grace submit: --payload @{path}: {expected}" in err, err
    assert book.counts_by_status() == {}


def test_a_fifo_payload_is_refused_without_blocking(config, book, capsys, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, _, err = run(capsys, "submit", "echo", "--payload", f"@{fifo}", "-c", config)
    assert code == 2 and f"--payload @{fifo}: is not a regular file" in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "grace submit: (json): malformed JSON at line 1 column 2"),
        (b'{"intent_id": "i\xff"}', "grace submit: (file): is not UTF-8 text"),
        (b'{"intent_id": "i1", "domain": "test"}', "grace submit: goal: is required"),
        (b'{"type": "search", "payload": {"query": "x"}}', "grace submit: origin: is required"),
        (None, "cannot read it: No such file or directory"),
        (b" " * (PAYLOAD_CAP + ENVELOPE_BYTES + 1), f"is over {PAYLOAD_CAP + ENVELOPE_BYTES} bytes"),
    ],
)
def test_bad_task_files_are_rejected(config, book, capsys, tmp_path, content, expected):
    document = tmp_path / "task.json" if content is None else write_bytes(tmp_path / "task.json", content)
    code, _, err = run(capsys, "submit", "--file", str(document), "-c", config)
    assert code == 2 and expected in err, err
    assert book.counts_by_status() == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "search", "--priority", "urgent"], "'urgent' is not low, normal, high, critical or a whole number"),
        (["submit", "search", "--sla-ms", "soon"], "invalid int value: 'soon'"),
        (["submit"], "one of the arguments type --file is required"),
        (["submit", "search", "--file", "t.json"], "not allowed with argument"),
        (["submit", "--file", "t.json", "--origin", "x", "--priority", "0"], "--origin, --priority: not allowed with"),
        (["task", "list", "--status", "done"], "unknown done; choose from received, queued"),
    ],
)
def test_bad_arguments_are_argparse_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2 and message in capsys.readouterr().err


# --- grace task show / list ----------------------------------------------------------------


def test_task_show_prints_the_whole_lifecycle(config, book, capsys):
    run(capsys, "submit", "echo", "--payload", '{"message": "hi"}', "--task-id", "t-1", "-c", config)
    received = book.get("t-1").received_at
    assert book.move("t-1", RECEIVED, status=QUEUED, run_id="run-abc", queued_at=received, queue_wait_ms=120)
    assert book.move("t-1", QUEUED, status=STARTED, started_at=received)
    book.record_outcome("t-1", result={"message": "hi", "origin": "cli"})
    assert book.move("t-1", STARTED, status=SUCCEEDED, finished_at=received, run_ms=800, sla_met=True)

    code, out, _ = run(capsys, "task", "show", "t-1", "-c", config)
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()[1:]}
    assert code == 0 and out.startswith("task t-1\n")
    assert lines["status"] == "succeeded" and lines["run_id"] == "run-abc" and lines["handler"] == "echo"
    assert (lines["queue_wait_ms"], lines["run_ms"], lines["sla_met"], lines["error"]) == ("120", "800", "True", "-")
    assert json.loads(lines["result"]) == {"message": "hi", "origin": "cli"}
    assert lines["received_at"] == received.isoformat()

    code, out, _ = run(capsys, "task", "show", "t-1", "--json", "-c", config)
    assert code == 0 and json.loads(out) == book.get("t-1").as_dict() == api.task("t-1", config)
    assert json.loads(out)["result"] == {"message": "hi", "origin": "cli"}


def test_an_unknown_task_is_exit_2(config, capsys):
    code, out, err = run(capsys, "task", "show", "nope", "-c", config)
    assert (code, out) == (2, "") and err == "grace task show: no task 'nope'\n"
    assert api.task("nope", config) is None


def test_task_list_filters_by_status(config, book, capsys):
    for task_id in ("a", "b"):
        run(capsys, "submit", "search", "--payload", '{"query": "x"}', "--task-id", task_id, "-c", config)
    assert book.move("b", RECEIVED, status=QUEUED)
    code, out, _ = run(capsys, "task", "list", "--status", "queued", "-c", config)
    assert code == 0 and [line.split()[:2] for line in out.splitlines()] == [["b", "queued"]]
    code, out, _ = run(capsys, "task", "list", "--json", "-c", config)
    assert code == 0 and [item["task_id"] for item in json.loads(out)] == ["a", "b"]


# --- grace.api ---------------------------------------------------------------------------


def test_the_python_api_submits_dicts_and_json_and_raises_on_rejection(config):
    task_id = api.submit({"type": "echo", "origin": "notebook", "payload": {"message": "m"}}, config)
    assert api.task(task_id, config)["submitted_via"] == "api"
    assert api.submit(json.dumps(SEED_INTENT), config) == "test_intent"
    with pytest.raises(TaskRejected) as rejected:
        api.submit({"type": "echo", "origin": "notebook", "payload": {}}, config)
    assert rejected.value.problems == [("payload.message", "is required")]
    with pytest.raises(TaskRejected, match="already taken"):
        api.submit(SEED_INTENT, config)


# --- on the real model: submitted by the CLI, run in a rendered instance, followed by the CLI ---


def ingest_folder(manifest, instance: DagsterInstance) -> None:
    """Scan the first source and ingest what it found, with the manifest's own (real) embedder."""
    pipelines = build_pipelines(manifest)
    resources = build_resources(manifest)
    sensor = build_folder_sensor(manifest, manifest.sources[0])
    requests = sensor(build_sensor_context(instance=instance, resources=resources)).run_requests
    assert requests
    for request in requests:
        assert materialize(
            [*pipelines.assets, *pipelines.asset_checks],
            selection=AssetSelection.assets("documents", "chunks", "embeddings"),
            partition_key=request.partition_key,
            resources=resources,
            instance=instance,
        ).success


def test_a_submitted_search_task_runs_on_the_real_model_and_shows_its_hits(config, book, capsys, tmp_path):
    manifest = load_manifest(config)
    assert isinstance(build_resources(manifest)["embedder"], EmbedderResource)
    ensure_key_file(manifest)  # as `grace dev` does on first start: ingest seals text under it
    folder = manifest.sources[0].path
    folder.mkdir(parents=True)
    (folder / "whales.txt").write_text("Blue whales are the largest animals ever known to have lived.")
    (folder / "trains.md").write_text("The night train to Vienna leaves from platform nine at 22:40.")
    home = tmp_path / "dagster_home"
    render_instance(manifest, home, tmp_path)
    instance = DagsterInstance.from_config(str(home))
    try:
        ingest_folder(manifest, instance)
        query = '{"query": "enormous sea mammals", "k": 1}'
        code, out, _ = run(capsys, "submit", "search", "--payload", query, "--origin", "intent", "-c", config)
        task_id = out.strip()
        [search_job] = [job for job in build_task_jobs(manifest) if job.name == "task_search"]
        tags = task_run_tags(book.get(task_id).task(), manifest.routing.origins)
        assert search_job.execute_in_process(run_config=task_run_config(task_id), instance=instance, tags=tags).success
        # The run-status sensor moves the task along from the run record, as under the daemon.
        build_task_status_sensor(manifest)(build_sensor_context(instance=instance, resources=build_resources(manifest)))
    finally:
        instance.dispose()

    code, out, _ = run(capsys, "task", "show", task_id, "--json", "-c", config)
    shown = json.loads(out)
    assert code == 0 and (shown["status"], shown["error"], shown["sla_met"]) == (SUCCEEDED, None, True)
    assert shown["result"]["query"] == "enormous sea mammals"
    assert [hit["path"] for hit in shown["result"]["hits"]] == ["whales.txt"]
    assert shown["queue_wait_ms"] >= 0 and shown["run_ms"] > 0
    code, out, _ = run(capsys, "task", "show", task_id, "-c", config)
    assert code == 0 and "whales.txt" in out and "succeeded" in out
    code, out, _ = run(capsys, "routing", "stats", "--json", "--dagster-home", str(home), "-c", config)
    intent = json.loads(out)["origins"]["intent"]
    assert code == 0 and (intent["succeeded"], intent["failed"], intent["sla_breaches"]) == (1, 0, 0)
    assert intent["queue_wait_p50_ms"] == shown["queue_wait_ms"]

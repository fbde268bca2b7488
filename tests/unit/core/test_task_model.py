"""A task's validation: the seed's intent, priorities, sizes, tags, and every bad input named by field."""

from __future__ import annotations

import json

import pytest

from grace.core.manifest import load_manifest
from grace.core.task_model import TaskRejected, canonical_json, task_run_tags
from grace.resources.tasks.project_handlers import accept_task, accept_task_json

SEED_INTENT = {"intent_id": "test_intent", "goal": "Test goal", "domain": "test", "sla_ms": 30000, "priority": "normal"}


@pytest.fixture
def manifest(write_manifest):
    return load_manifest(
        write_manifest(
            "sources:\n  - {name: docs, path: inbox, patterns: ['**/*.md']}\n"
            "routing:\n  max_payload_bytes: 200\n  default_sla_ms: 5000\n  origins: {intent: 12}\n"
            "  routes: {test: search, search: search, ingest: ingest, reindex: reindex}\n"
            "index:\n  shards: 3\n"
        )
    )


def rejection(data, manifest) -> str:
    with pytest.raises(TaskRejected) as caught:
        accept_task_json(data if isinstance(data, str) else json.dumps(data), manifest)
    return str(caught.value)


def test_the_seed_intent_is_a_task_of_origin_intent_typed_by_its_domain(manifest):
    task = accept_task(SEED_INTENT, manifest)
    assert (task.task_id, task.type, task.origin, task.handler) == ("test_intent", "test", "intent", "search")
    assert task.priority == 0 and task.sla_ms == 30000
    assert task.payload == {"intent_id": "test_intent", "goal": "Test goal", "domain": "test"}


def test_size_is_bytes_of_canonical_json_whatever_the_formatting(manifest):
    spaced = '{"type": "search", "origin": "cli", "payload": {  "query" : "caf\\u00e9",   "k": 2 }}'
    task = accept_task_json(spaced, manifest)
    assert canonical_json(task.payload) == '{"k":2,"query":"café"}'.encode()
    assert task.data_size_bytes == len('{"k":2,"query":"café"}'.encode()) == 23


@pytest.mark.parametrize(
    ("given", "number"), [("low", -10), ("normal", 0), ("high", 10), ("critical", 20), (-100, -100)]
)
def test_priorities_map_to_dagster_priority(manifest, given, number):
    task = accept_task({"type": "search", "origin": "cli", "priority": given, "payload": {"query": "x"}}, manifest)
    assert task.priority == number
    assert task_run_tags(task, ["intent"])["dagster/priority"] == str(number)


def test_defaults_fill_id_and_sla(manifest):
    first = accept_task({"type": "search", "origin": "cli", "payload": {"query": "x"}}, manifest)
    second = accept_task({"type": "search", "origin": "cli", "payload": {"query": "x"}}, manifest)
    assert first.sla_ms == 5000 and first.task_id != second.task_id and len(first.task_id) == 32


def test_every_routed_run_carries_its_tags(manifest):
    task = accept_task({**SEED_INTENT}, manifest)
    tags = task_run_tags(task, manifest.routing.origins)
    assert tags == {
        "grace/origin": "intent",
        "grace/task_id": "test_intent",
        "grace/task_type": "test",
        "dagster/priority": "0",
        "grace/sla_ms": "30000",
        "grace/data_size_bytes": str(task.data_size_bytes),
        "dagster/retry_on_asset_or_op_failure": "false",
    }
    unlisted = task_run_tags(
        accept_task({"type": "search", "origin": "bob", "payload": {"query": "x"}}, manifest), ["intent"]
    )
    assert unlisted["grace/unlisted_origin"] == "bob"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"type": "search", "origin": "cli",', "(json): malformed JSON at line 1 column"),
        ("[1, 2]", "a task is a JSON object, not list"),
        ('{"type": "search", "origin": "cli", "payload": {"query": NaN}}', "NaN is not JSON"),
        ({"origin": "cli"}, "type: is required"),
        ({"type": "search"}, "origin: is required"),
        ({"type": "search", "origin": "cli", "colour": 1}, "colour: is not a known field"),
        ({"type": "search", "origin": "cli", "payload": "find cats"}, "payload: Input should be a valid dictionary"),
        ({"type": "search", "origin": "cli", "payload": {"query": 3}}, "payload.query: Input should be a valid string"),
        ({"type": "search", "origin": "cli", "payload": {"query": "  "}}, "payload.query: must not be blank"),
        ({"type": "laundry", "origin": "cli"}, "type: unknown task type 'laundry'; grace.yaml routes: ingest, reindex"),
        ({"type": "search", "origin": "cli", "payload": {"query": "x" * 300}}, "over the cap of 200"),
        (
            {"type": "search", "origin": "cli", "priority": 101, "payload": {"query": "x"}},
            "priority: 101 is out of range",
        ),
        ({"type": "search", "origin": "cli", "priority": "urgent"}, "priority: 'urgent' is not a priority; use low"),
        (
            {"type": "search", "origin": "cli", "sla_ms": 0, "payload": {"query": "x"}},
            "sla_ms: Input should be greater",
        ),
        (
            {"type": "search", "origin": "cli", "sla_ms": 10**12, "payload": {"query": "x"}},
            "sla_ms: Input should be less",
        ),
        ({"type": "search", "origin": "two words"}, "origin: String should match pattern"),
        ({"type": "search", "origin": "cli", "task_id": "../../x"}, "task_id: String should match pattern"),
        (
            {"type": "ingest", "origin": "cli", "payload": {"title": "t", "content": "c", "path": "../outside.md"}},
            "payload.path: '../outside.md' is outside the watched roots",
        ),
        (
            {"type": "ingest", "origin": "cli", "payload": {"title": "t", "content": "c", "path": "/etc/passwd"}},
            "is outside the watched roots",
        ),
        (
            {"type": "ingest", "origin": "cli", "payload": {"title": "t", "content": "c", "path": "notes/a.pdf"}},
            "would not be ingested by source 'docs'",
        ),
        (
            {"type": "ingest", "origin": "cli", "payload": {"title": "t", "content": "c", "source": "x"}},
            "unknown source 'x'",
        ),
        ({"type": "reindex", "origin": "cli", "payload": {"shards": [0, 7]}}, "no shard [7]: grace.yaml has 3 shards"),
        ({"intent_id": "i-1", "domain": "test"}, "goal: is required"),
        ({"intent_id": "i-1", "goal": "g", "domain": "cooking"}, "unknown task type 'cooking'"),
    ],
)
def test_bad_tasks_are_rejected_with_the_field_and_a_fix(manifest, data, expected):
    assert expected in rejection(data, manifest)


def test_non_utf8_bytes_are_rejected(manifest):
    with pytest.raises(TaskRejected, match="not UTF-8"):
        accept_task_json(b'{"type": "search", "origin": "\xff"}', manifest)


def test_every_problem_is_reported_at_once(manifest):
    with pytest.raises(TaskRejected) as caught:
        accept_task({"type": 3, "origin": "", "priority": "urgent"}, manifest)
    problems = dict(caught.value.problems)
    assert {"type", "origin", "priority"} <= set(problems)

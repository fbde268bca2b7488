"""grace.yaml's routing section and the project's handlers folder: cross-field checks and the allowlist."""

from __future__ import annotations

import pytest

from grace.core.manifest import ManifestError
from grace.core.routing_config import run_queue_limits
from grace.resources.tasks.project_handlers import load_routed_manifest

SOURCE = "sources:\n  - {name: docs, path: inbox}\n"


def errors_of(write_manifest, text: str) -> str:
    with pytest.raises(ManifestError) as caught:
        load_routed_manifest(write_manifest(text))
    return str(caught.value)


def test_routing_defaults_resolve_next_to_the_manifest(write_manifest, tmp_path):
    routing = load_routed_manifest(write_manifest(SOURCE)).routing
    assert routing.inbox == tmp_path / "tasks" and routing.handlers == tmp_path / "handlers"
    assert routing.capacity == 50 and routing.origins == {"intent": 12, "ingest": 8}
    assert routing.routes == {
        "ingest": "ingest",
        "search": "search",
        "reindex": "reindex",
        "rotate_keys": "rotate_keys",
    }
    assert routing.quota_of("intent") == 12 and routing.quota_of("somebody") == routing.default_quota


@pytest.mark.parametrize(
    ("routing", "expected"),
    [
        ("  capacity: 4\n  origins: {intent: 5}\n", ["routing", "quotas above capacity 4", "'intent': 5"]),
        ("  capacity: 2\n  default_quota: 3\n  origins: {a: 1}\n", ["default_quota 3 is above capacity 2"]),
        ("  capacity: 2\n", ["{'intent': 12, 'ingest': 8} (the default origins; set routing.origins)"]),
        ("  origins: {intent: 0}\n", ["routing.origins.intent", "greater than or equal to 1"]),
        ("  origins: {'bad origin': 2}\n", ["routing.origins", "bad origin"]),
        ("  capacity: 0\n", ["routing.capacity", "greater than or equal to 1"]),
        ("  routes: {lookup: fetch_everything}\n", ["unknown handlers {'lookup': 'fetch_everything'}", "search"]),
        ("  routes: {lookup: os.system}\n", ["routing.routes.lookup", "pattern"]),
        ("  routes: {}\n", ["routes is empty"]),
        ("  default_sla_ms: 0\n", ["routing.default_sla_ms"]),
        ("  max_payload_bytes: 1TB\n", ["routing.max_payload_bytes"]),
        ("  stats_cron: often\n", ["five fields"]),
        ("  inbox: inbox/tasks\n", ["routing.inbox", "overlaps source 'docs'"]),
        ("  queue: fifo\n", ["routing.queue: unknown key"]),
    ],
)
def test_bad_routing_is_named_with_its_line(write_manifest, routing, expected):
    message = errors_of(write_manifest, SOURCE + "routing:\n" + routing)
    for fragment in expected:
        assert fragment in message, message


def test_the_old_capacity_key_says_where_it_moved(write_manifest):
    message = errors_of(write_manifest, SOURCE + "daemon:\n  max_concurrent_runs: 8\n")
    assert "grace.yaml:3: daemon" in message and "routing.capacity" in message


def test_routes_may_name_handlers_of_the_allowlisted_folder_only(write_manifest, tmp_path):
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "shout.py").write_text(
        "from grace.core.handler_api import handler\n\n"
        "@handler('shout')\ndef shout(payload, context):\n    return str(payload).upper()\n\n"
        "def helper(payload, context):\n    return None\n"
    )
    routing = load_routed_manifest(write_manifest(SOURCE + "routing:\n  routes: {yell: shout}\n")).routing
    assert routing.routes == {"yell": "shout"}
    # An undecorated function of the same folder is not a handler.
    message = errors_of(write_manifest, SOURCE + "routing:\n  routes: {yell: helper}\n")
    assert "unknown handlers {'yell': 'helper'}" in message and "shout" in message


def test_a_broken_handler_module_names_its_file_and_line(write_manifest, tmp_path):
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "broken.py").write_text("x = 1\ndef oops(:\n    pass\n")
    message = errors_of(write_manifest, SOURCE)
    assert "broken.py line 2" in message and "SyntaxError" in message


def test_a_handler_module_that_raises_on_import_names_its_line(write_manifest, tmp_path):
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "needs.py").write_text("import os\n\nraise RuntimeError('no config')\n")
    message = errors_of(write_manifest, SOURCE)
    assert "needs.py line 3" in message and "RuntimeError: no config" in message


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        ({"a.py": "@handler('search')\ndef f(p, c):\n    return 1\n"}, "'search' is built in"),
        (
            {
                "a.py": "@handler('twin')\ndef f(p, c):\n    return 1\n",
                "b.py": "@handler('twin')\ndef g(p, c):\n    return 2\n",
            },
            "'twin' is defined twice",
        ),
    ],
)
def test_handler_names_are_unique_and_never_shadow_a_built_in(write_manifest, tmp_path, modules, expected):
    (tmp_path / "handlers").mkdir()
    for name, body in modules.items():
        (tmp_path / "handlers" / name).write_text("from grace.core.handler_api import handler\n\n" + body)
    assert expected in errors_of(write_manifest, SOURCE)


def test_an_invalid_handler_name_fails_at_import(write_manifest, tmp_path):
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "a.py").write_text(
        "from grace.core.handler_api import handler\n\n@handler('Not A Name')\ndef f(p, c):\n    return 1\n"
    )
    assert "lowercase letters" in errors_of(write_manifest, SOURCE)


def test_the_run_queue_gets_capacity_each_quota_and_a_default_for_unlisted_origins(write_manifest):
    text = SOURCE + "routing:\n  capacity: 9\n  default_quota: 2\n  origins: {intent: 3, ingest: 4}\n"
    limits = run_queue_limits(load_routed_manifest(write_manifest(text)).routing)
    assert limits["max_concurrent_runs"] == 9
    assert {"key": "grace/origin", "value": "intent", "limit": 3} in limits["tag_concurrency_limits"]
    assert {"key": "grace/origin", "value": "ingest", "limit": 4} in limits["tag_concurrency_limits"]
    unlisted = [limit for limit in limits["tag_concurrency_limits"] if limit["key"] == "grace/unlisted_origin"]
    assert unlisted == [{"key": "grace/unlisted_origin", "value": {"applyLimitPerUniqueValue": True}, "limit": 2}]

"""The HTTP API on a real uvicorn at 127.0.0.1: every endpoint, and the requests it must refuse.

Plumbing only: a hashing embedder stands in for the model (the seed's curl test, tests/e2e/test_seed_curl.py,
and tests/unit/http/test_serve_cli.py run the real one), and ingest runs in process with real Dagster.
"""

from __future__ import annotations

import base64
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from grace.core.manifest import load_manifest
from grace.deploy.instance import render_instance
from grace.http.app import build_app
from grace.http.ingest import ServeRefused
from grace.resources.index.search import Searcher
from tests.helpers.api_server import ThreadedServer, call
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment

API_SECTION = "api:\n  max_body_bytes: 4KiB\nrouting:\n  routes: {test: search, search: search, ingest: ingest}\n"
SEED_INGEST = {
    "content": "Grace is an autonomous AI system with full Layer 1-4 integration",
    "title": "Test Document",
    "artifact_type": "document",
    "actor": "test_user",
}
SEED_INTENT = {"intent_id": "test_intent", "goal": "Test goal", "domain": "test", "sla_ms": 30000, "priority": "normal"}


class Api:
    """A deployment (hashing embedder, 2 shards) and the API serving it."""

    def __init__(self, root: Path, extra: str = API_SECTION, **deployment_options):
        self.deployment = Deployment(root, None, HashingEmbedderResource(), **deployment_options)
        self.config = root / "grace.yaml"
        self.config.write_text(self.config.read_text() + extra)
        self.manifest = load_manifest(self.config)
        self.home = root / "dagster_home"
        deployment = self.deployment
        searcher = Searcher(deployment.store, deployment.index, deployment.embedder)
        self.app = build_app(self.manifest, self.config, searcher, dagster_home=self.home)

    def file(self, path: str) -> Path:
        return self.manifest.sources[0].path / path


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    api = Api(tmp_path_factory.mktemp("api"))
    with ThreadedServer(api.app) as server:
        api.url = server.url
        yield api


def post(api, path: str, body=None, **options):
    return call(api.url, "POST", path, body, **options)


def get(api, path: str, **options):
    return call(api.url, "GET", path, **options)


def assert_error(answer, status: int, field: str | None, *words: str) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json", answer
    assert set(answer.json) == {"error", "field"} and answer.json["field"] == field, answer.json
    for word in words:
        assert word in answer.json["error"], answer.json


def test_health_names_the_model_and_shards(api):
    answer = get(api, "/health")
    assert answer.status == 200
    assert answer.json["status"] == "ok" and answer.json["store"] == "ok"
    assert answer.json["model_id"] == api.deployment.embedder.model_id and answer.json["shards"] == 2


def test_ingest_writes_a_file_that_the_pipeline_ingests_and_search_finds(api):
    answer = post(api, "/api/knowledge/ingest", SEED_INGEST)
    assert answer.status == 201, answer
    identity, path = answer.json["id"], answer.json["path"]
    assert path == f"api/test-document-{identity}.md" and answer.json["source"] == "docs"
    assert api.file(path).read_text() == SEED_INGEST["content"]
    assert answer.json["bytes"] == len(SEED_INGEST["content"].encode())
    assert get(api, f"/api/knowledge/{identity}").json["status"] == "waiting"

    api.deployment.sync()
    status = get(api, f"/api/knowledge/{identity}").json
    assert status == {
        "id": identity,
        "source": "docs",
        "path": path,
        "status": "active",
        "reason": None,
        "chunks": 1,
        "searchable": True,
        "indexed": True,
    }
    stats = get(api, "/api/vectors/index/stats").json
    assert stats["backend"] == "annoy" and stats["index_coverage"] == 1.0
    assert stats["total_vectors"] == stats["indexed_embeddings"] == stats["total_embeddings"] >= 1
    assert len(stats["shards"]) == 2 and {"pending", "tombstoned", "model_id"} <= set(stats)
    found = post(api, "/api/vectors/search", {"query": "autonomous AI system integration", "top_k": 5})
    assert found.status == 200 and found.json["top_k"] == 5
    assert found.json["results"][0]["path"] == path
    assert {"score", "source", "path", "chunk", "text", "title", "heading", "first_page", "last_page"} <= set(
        found.json["results"][0]
    )


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_a_search_names_its_mode_and_each_hit_its_ranks(api, mode):
    api.deployment.drop("codes/e4711.txt", "The pump stops with error E4711 when its filter is blocked.")
    api.deployment.sync()
    found = post(api, "/api/vectors/search", {"query": "what does E4711 mean", "top_k": 3, "mode": mode})
    assert found.status == 200 and found.json["mode"] == mode
    [first, *_rest] = found.json["results"]
    assert first["path"] == "codes/e4711.txt"
    assert first["found_by"] in ({"dense", "both"} if mode != "lexical" else {"lexical"})
    assert (first["dense_rank"] is not None) == (mode != "lexical")
    assert (first["lexical_rank"] is not None) == (mode != "dense")
    unset = post(api, "/api/vectors/search", {"query": "what does E4711 mean", "top_k": 3})
    assert unset.json["mode"] == "hybrid", "grace.yaml's default"


def test_a_search_takes_a_filter_and_a_bad_one_is_a_422_naming_it(api):
    api.deployment.drop("codes/e4711.txt", "The pump stops with error E4711 when its filter is blocked.")
    api.deployment.drop("codes/e4711.md", "E4711 again, in a markdown file.")
    api.deployment.sync()
    body = {"query": "E4711", "top_k": 5, "filter": {"type": "md", "path": "codes/**"}}
    found = post(api, "/api/vectors/search", body)
    assert found.status == 200 and [hit["path"] for hit in found.json["results"]] == ["codes/e4711.md"]
    for bad, field in [
        ({"type": "m d"}, "filter.type"),
        ({"modified_after": "last week"}, "filter.modified_after"),
        ({"page": "2"}, "filter.page"),
        ({"colour": "red"}, "filter.colour"),
        ({"source": "elsewhere"}, "filter.source"),
        ("docs", "filter"),
    ]:
        refused = post(api, "/api/vectors/search", {"query": "E4711", "filter": bad})
        assert refused.status == 422 and refused.json["field"] == field, (bad, refused.json)
    unknown = post(api, "/api/vectors/search", {"query": "E4711", "filter": {"source": "elsewhere"}})
    assert "no source named 'elsewhere'; grace.yaml names docs" in unknown.json["error"]


def test_concurrent_searches_answer_as_sequential_ones(api):
    """Searches run on the server's thread pool at once; each must match the same search made alone."""
    for number in range(12):
        api.deployment.drop(f"many/note{number}.txt", f"note {number} about topic{number % 4} and word{number % 3}")
    api.deployment.sync()
    searcher = Searcher(api.deployment.store, api.deployment.index, api.deployment.embedder)
    queries = [f"topic{number % 4} word{number % 3}" for number in range(24)]
    expected = [[(hit.path, hit.chunk_id) for hit in searcher.search(query, 4)] for query in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda query: post(api, "/api/vectors/search", {"query": query, "top_k": 4}), queries))
    assert [[(hit["path"], hit["chunk_id"]) for hit in answer.json["results"]] for answer in answers] == expected


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_json_body_is_json_whatever_its_label(api, content_type):
    """curl -d sends form-urlencoded; the seed's first curl sends no Content-Type of its own."""
    headers = {"Content-Type": content_type} if content_type else {}
    answer = post(api, "/api/knowledge/ingest", raw=b'{"content": "Test content", "title": "Test"}', headers=headers)
    assert answer.status == 201, answer
    assert answer.json["path"].startswith("api/test-")


def test_a_title_never_names_a_path(api):
    for title, prefix in [
        ("../../../etc/passwd", "api/etc-passwd-"),
        ("/abs/olute\\..\\x", "api/abs-olute-x-"),
        ("", "api/untitled-"),
        ("..", "api/untitled-"),
        ("Ünïcödé Straße 東京", "api/unicode-strae-"),
        ("x" * 500, "api/" + "x" * 60 + "-"),
    ]:
        answer = post(api, "/api/knowledge/ingest", {"content": "some words", "title": title})
        assert answer.status == 201, (title, answer)
        path = answer.json["path"]
        assert path.startswith(prefix) and path.count("/") == 1, (title, path)
        written = api.file(path).resolve()
        assert written.parent == (api.manifest.sources[0].path / "api").resolve() and written.is_file()


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"title": "t"}, "content", ["is required"]),
        ({"content": "   \n", "title": "t"}, "content", ["whitespace"]),
        ({"content": "a\u0000b", "title": "t"}, "content", ["NUL"]),
        ({"content": "x" * 1500, "title": "t"}, "content", ["max_bytes"]),
        ({"content": 42, "title": "t"}, "content", ["string", "got a number"]),
        ({"content": "text", "title": ["t"]}, "title", ["string", "got an array"]),
        ({"content": "text", "title": "t", "tags": ["x"]}, "tags", ["not a field"]),
        ({"content": "text", "title": "t", "actor": None}, "actor", ["string", "got null"]),
    ],
)
def test_bad_ingest_requests_get_422_naming_the_field(api, body, field, words):
    before = sorted(path.name for path in (api.manifest.sources[0].path / "api").glob("*"))
    assert_error(post(api, "/api/knowledge/ingest", body), 422, field, *words)
    assert sorted(path.name for path in (api.manifest.sources[0].path / "api").glob("*")) == before


def test_a_lone_surrogate_in_content_is_refused(api):
    raw = b'{"content": "bad \\ud800 text", "title": "t"}'
    assert_error(post(api, "/api/knowledge/ingest", raw=raw), 422, "content", "lone surrogate")
    raw = b'{"query": "bad \\udfff"}'
    assert_error(post(api, "/api/vectors/search", raw=raw), 422, "query", "not valid Unicode")


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"query": "whales", "top_k": "5"}, "top_k", ["integer", "got a string"]),
        ({"query": "whales", "top_k": 2.5}, "top_k", ["integer"]),
        ({"query": "whales", "top_k": True}, "top_k", ["integer", "got a boolean"]),
        ({"query": "whales", "top_k": 0}, "top_k", ["greater than or equal to 1"]),
        ({"query": "whales", "top_k": 1001}, "top_k", ["less than or equal to 1000"]),
        ({"top_k": 3}, "query", ["is required"]),
        ({"query": "  "}, "query", ["whitespace"]),
        ({"query": "whales", "topk": 3}, "topk", ["not a field"]),
        ({"query": "whales", "mode": "semantic"}, "mode", ["hybrid", "dense", "lexical"]),
        ({"query": "whales", "mode": 1}, "mode", ["hybrid"]),
    ],
)
def test_bad_search_requests_get_422_naming_the_field(api, body, field, words):
    assert_error(post(api, "/api/vectors/search", body), 422, field, *words)


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b'{"query": "whales",', 400, ["not valid JSON", "line 1 column 20"]),
        (b"query=whales&top_k=3", 400, ["not valid JSON"]),
        (b'{"query": "whales", "top_k": NaN}', 400, ["NaN is not JSON"]),
        (b"", 400, ["no body"]),
        (b"\xff\xfe{}", 400, ["not UTF-8"]),
        (b'["whales"]', 422, ["must be a JSON object, not an array"]),
    ],
)
def test_malformed_bodies_are_refused(api, raw, status, words):
    assert_error(post(api, "/api/vectors/search", raw=raw), status, None, *words)


def test_bodies_over_the_cap_get_413_with_or_without_a_length(api):
    big = b'{"content": "' + b"x" * 5000 + b'", "title": "t"}'
    assert_error(post(api, "/api/knowledge/ingest", raw=big), 413, None, "api.max_body_bytes (4096)")
    chunked = post(api, "/api/knowledge/ingest", chunks=[big[:3000], big[3000:]])
    assert_error(chunked, 413, None, "more than 4096 bytes")
    assert get(api, "/health").status == 200, "the server goes on serving"


def test_unknown_routes_and_methods_answer_json(api):
    assert_error(get(api, "/api/nothing/here"), 404, None, "no endpoint /api/nothing/here")
    assert_error(get(api, "/"), 404, None, "no endpoint /")
    wrong = get(api, "/api/vectors/search")
    assert_error(wrong, 405, None, "GET is not allowed", "POST")
    assert wrong.headers["allow"] == "POST"
    assert_error(get(api, "/api/knowledge/0123456789abcdef"), 404, "id", "no file written")
    assert_error(get(api, "/api/knowledge/..%2F..%2Fetc"), 404, None)
    assert_error(get(api, "/api/tasks/no-such-task"), 404, "id", "no task has id")


def test_the_seed_intent_is_routed_once(api):
    answer = post(api, "/api/intents/submit", SEED_INTENT)
    assert answer.status == 202, answer
    assert answer.json["task_id"] == answer.json["intent_id"] == "test_intent"
    assert answer.json["origin"] == "intent" and answer.json["sla_ms"] == 30000 and answer.json["data_size_bytes"] > 0
    stored = get(api, "/api/tasks/test_intent").json
    assert stored["origin"] == "intent" and stored["type"] == "test" and stored["submitted_via"] == "api"
    assert stored["payload"]["goal"] == "Test goal"
    assert_error(post(api, "/api/intents/submit", SEED_INTENT), 409, "intent_id", "already taken")


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"domain": "unrouted"}, "domain", ["unknown task type 'unrouted'"]),
        ({"sla_ms": "soon"}, "sla_ms", []),
        ({"priority": "urgent"}, "priority", ["not a priority"]),
        ({"goal": None}, "goal", []),
        ({"type": "search"}, "type", ["POST whole tasks to /api/tasks"]),
    ],
)
def test_bad_intents_get_422_naming_the_field(api, change, field, words):
    intent = {**SEED_INTENT, "intent_id": "bad_intent", **change}
    assert_error(post(api, "/api/intents/submit", intent), 422, field, *words)
    assert get(api, "/api/tasks/bad_intent").status == 404


def test_a_general_task_is_accepted_and_read_back(api):
    answer = post(api, "/api/tasks", {"type": "search", "origin": "notebook", "payload": {"query": "whales"}})
    assert answer.status == 202, answer
    assert answer.json["origin"] == "notebook" and answer.json["status"] == "received"
    stored = get(api, f"/api/tasks/{answer.json['task_id']}").json
    assert stored["status"] == "received" and stored["payload"] == {"query": "whales"}
    assert_error(post(api, "/api/tasks", {"type": "search", "origin": "x"}), 422, "payload.query", "required")


def test_routing_stats_need_an_instance_then_answer_per_origin(api):
    assert_error(get(api, "/api/htm/routing/stats"), 503, None, "no Dagster instance", "grace dev")
    render_instance(api.manifest, api.home, api.config.parent)
    answer = get(api, "/api/htm/routing/stats")
    assert answer.status == 200, answer
    intent = answer.json["origins"]["intent"]
    assert intent["current_count"] == 0 and intent["quota_used"] == "0/12" and intent["utilization"] == 0.0


def test_key_status_names_the_kek_source_never_the_key(api):
    answer = get(api, "/api/keys/status")
    assert answer.status == 200, answer
    assert "master.key" in answer.json["kek"]
    key = (api.manifest.state_dir / "master.key").read_text().strip()
    assert key not in answer.raw.decode()


def test_a_token_guards_every_endpoint_but_health(tmp_path, monkeypatch):
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("GRACE_TEST_API_TOKEN", key)
    api = Api(tmp_path, "api:\n  token: env:GRACE_TEST_API_TOKEN\n")
    with ThreadedServer(api.app) as server:
        api.url = server.url
        assert get(api, "/health").status == 200
        assert_error(get(api, "/api/vectors/index/stats"), 401, "Authorization", "needs a token")
        wrong = {"Authorization": f"Bearer {base64.b64encode(os.urandom(32)).decode()}"}
        assert_error(get(api, "/api/vectors/index/stats", headers=wrong), 401, "Authorization", "wrong")
        assert_error(get(api, "/api/nothing", headers={"Authorization": "Bearer x"}), 401, "Authorization")
        url_safe = base64.urlsafe_b64encode(base64.b64decode(key)).decode()
        for token in (key, url_safe):
            answer = get(api, "/api/vectors/index/stats", headers={"Authorization": f"Bearer {token}"})
            assert answer.status == 200, answer


def test_a_source_that_takes_no_md_or_txt_stops_the_server(tmp_path):
    (tmp_path / "grace.yaml").write_text(
        "state_dir: state\nsources:\n  - {name: docs, path: inbox, patterns: ['**/*.rst']}\n"
        "embedding: {backend: torch}\n"
    )
    manifest = load_manifest(tmp_path / "grace.yaml")
    with pytest.raises(ServeRefused, match=r"sources\[\].patterns \['\*\*/\*.rst'\].*api.ingest_source"):
        build_app(manifest, tmp_path / "grace.yaml", searcher=object())


def test_a_source_whose_patterns_take_no_subfolder_gets_the_files_at_its_top(tmp_path):
    flat_source = "  - {name: flat, path: flat, patterns: ['*.txt']}\n"
    api = Api(tmp_path, "api: {ingest_source: flat}\n", extra_sources=flat_source)
    with ThreadedServer(api.app) as server:
        answer = call(server.url, "POST", "/api/knowledge/ingest", {"content": "flat words", "title": "Flat"})
        assert answer.status == 201, answer
        assert answer.json["source"] == "flat" and answer.json["path"] == f"flat-{answer.json['id']}.txt"
        assert (tmp_path / "flat" / answer.json["path"]).read_text() == "flat words"

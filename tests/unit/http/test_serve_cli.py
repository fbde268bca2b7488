"""`grace serve` as a command, on the real model: its discovery file, `grace search` through the warm server
(same output as local search) and without it, and the rules for binding beyond loopback."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grace.cli.main import main
from grace.core.manifest import load_manifest
from grace.http.client import read_discovery, request_json
from grace.http.serve import api_child_problem, client_url
from grace.resources.embedding.embedder import OFFLINE_ENVIRONMENT
from tests.helpers.harness import Deployment

GRACE = str(Path(sys.executable).with_name("grace"))
QUERY = "enormous sea mammals"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, onnx_model_cache) -> Deployment:
    deployment = Deployment(tmp_path_factory.mktemp("serve"), None, None, shards=2, embedding_backend="onnx-int8")
    deployment.drop("whales.txt", "Blue whales are the largest animals ever known to have lived.")
    deployment.drop("trains.md", "The night train to Vienna leaves from platform nine at 22:40.")
    deployment.drop("bread.txt", "Sourdough bread rises slowly overnight in a cool kitchen.")
    deployment.sync()
    return deployment


def grace(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **OFFLINE_ENVIRONMENT, **(env or {})}
    return subprocess.run([GRACE, *args], capture_output=True, text=True, env=environment, timeout=120)


class Serve:
    """`grace serve --port 0` as a subprocess, its output in a log file; ready once api.json names it."""

    def __init__(self, config: Path, log: Path, env: dict | None = None, options: tuple[str, ...] = ()):
        self.manifest = load_manifest(config)
        self.log_path = log
        self.log = open(log, "wb")
        self.process = subprocess.Popen(
            [GRACE, "serve", "-c", str(config), "--port", "0", *options],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **OFFLINE_ENVIRONMENT, **(env or {})},
        )
        deadline = time.monotonic() + 60
        while (found := read_discovery(self.manifest)) is None or found["pid"] != self.process.pid:
            assert self.process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"grace serve wrote no api.json: {log.read_text()}"
            time.sleep(0.05)
        self.url = found["url"]

    def searches_served(self) -> int:
        return self.log_path.read_text().count('"POST /api/vectors/search HTTP/1.1" 200')

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self.log.close()


def test_grace_search_goes_through_the_warm_server_and_prints_the_same(deployment, tmp_path):
    config = str(deployment.root / "grace.yaml")
    local = grace("search", QUERY, "-c", config, "--local")
    local_json = grace("search", QUERY, "-c", config, "--local", "--json", "-k", "3")
    assert local.returncode == 0 and " 1. " in local.stdout and "whales.txt" in local.stdout.splitlines()[0]

    server = Serve(deployment.root / "grace.yaml", tmp_path / "serve.log")
    try:
        assert server.url.startswith("http://127.0.0.1:")
        warm = grace("search", QUERY, "-c", config)
        warm_json = grace("search", QUERY, "-c", config, "--json", "-k", "3")
        assert server.searches_served() == 2, server.log_path.read_text()
        assert (warm.stdout, warm.stderr) == (local.stdout, local.stderr)
        assert json.loads(warm_json.stdout) == json.loads(local_json.stdout)
        assert warm_json.stdout == local_json.stdout
        assert grace("search", QUERY, "-c", config, "--local").stdout == local.stdout
        assert server.searches_served() == 2, "--local never asks the server"

        second = grace("serve", "-c", config, "--port", "0")
        assert second.returncode == 2 and f"pid {server.process.pid} already serves" in second.stderr
    finally:
        server.stop()
    assert read_discovery(deployment.manifest) is None
    assert not (deployment.manifest.state_dir / "api.json").exists(), "removed at shutdown"
    after = grace("search", QUERY, "-c", config)
    assert (after.returncode, after.stdout, after.stderr) == (0, local.stdout, "")


def test_a_stale_discovery_file_falls_back_to_local_search(deployment, tmp_path):
    config = str(deployment.root / "grace.yaml")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    discovery = deployment.manifest.state_dir / "api.json"
    for content in (
        json.dumps({"url": "http://127.0.0.1:9", "pid": int(finished.stdout), "token_required": False}),
        json.dumps({"url": "http://127.0.0.1:9", "pid": os.getpid(), "token_required": False}),  # alive, no server
        "{not json",
    ):
        discovery.write_text(content)
        try:
            found = grace("search", QUERY, "-c", config)
        finally:
            discovery.unlink()
        assert found.returncode == 0 and found.stderr == "" and "whales.txt" in found.stdout.splitlines()[0]
    # A pid that lives on in another process, and no server behind the URL: a new server takes over.
    discovery.write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": os.getpid(), "token_required": False}))
    Serve(deployment.root / "grace.yaml", tmp_path / "serve.log").stop()


def test_a_remote_bind_with_a_token_serves_and_the_cli_sends_the_token(deployment, tmp_path):
    config = deployment.root / "guarded.yaml"  # the same deployment, with api.token set
    config.write_text((deployment.root / "grace.yaml").read_text() + "api:\n  token: env:GRACE_TEST_API_TOKEN\n")
    env = {"GRACE_TEST_API_TOKEN": base64.b64encode(os.urandom(32)).decode()}
    server = Serve(config, tmp_path / "serve.log", env, ("--host", "0.0.0.0", "--allow-remote"))
    try:
        assert server.url.startswith("http://127.0.0.1:"), "a wildcard bind is reached on loopback"
        assert read_discovery(load_manifest(config))["token_required"] is True
        assert request_json(server.url, "GET", "/api/vectors/index/stats")[0] == 401
        assert request_json(server.url, "GET", "/health")[0] == 200
        found = grace("search", QUERY, "-c", str(config), env=env)
        assert found.returncode == 0 and "whales.txt" in found.stdout.splitlines()[0]
        assert server.searches_served() == 1, server.log_path.read_text()
        wrong = grace(
            "search", QUERY, "-c", str(config), env={"GRACE_TEST_API_TOKEN": env["GRACE_TEST_API_TOKEN"][::-1]}
        )
        assert wrong.returncode == 0 and "whales.txt" in wrong.stdout.splitlines()[0], "refused: searched locally"
        assert server.searches_served() == 1
    finally:
        server.stop()


def test_binding_beyond_loopback_needs_the_flag_and_a_token(deployment, capsys):
    config = str(deployment.root / "grace.yaml")
    assert main(["serve", "-c", config, "--host", "0.0.0.0"]) == 2
    assert "pass --allow-remote and set api.token" in capsys.readouterr().err
    assert main(["serve", "-c", config, "--host", "192.0.2.10", "--allow-remote"]) == 2
    assert "needs a token: set api.token in grace.yaml" in capsys.readouterr().err
    assert read_discovery(deployment.manifest) is None


def test_grace_dev_names_what_stops_it_serving_the_api(tmp_path):
    (tmp_path / "grace.yaml").write_text("sources: []\napi: {host: 0.0.0.0}\n")
    assert "api.host is 0.0.0.0, not loopback" in api_child_problem(load_manifest(tmp_path / "grace.yaml"), 8000)
    (tmp_path / "grace.yaml").write_text("sources: []\n")
    manifest = load_manifest(tmp_path / "grace.yaml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        problem = api_child_problem(manifest, port)
        assert f"cannot listen on 127.0.0.1:{port}" in problem and "--api-port" in problem and "--no-api" in problem
    assert api_child_problem(manifest, port) is None
    assert client_url("0.0.0.0", 8000) == "http://127.0.0.1:8000" and client_url("::", 1) == "http://[::1]:1"

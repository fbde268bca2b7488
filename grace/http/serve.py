"""`grace serve`: the HTTP API on uvicorn, with its discovery file; and the API child that `grace dev` starts."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from grace.core.http_config import LOOPBACK_HOSTS
from grace.core.manifest import DEFAULT_MANIFEST, Manifest
from grace.http.client import ApiUnavailable, discovery_path, read_discovery, request_json
from grace.resources.tasks.project_handlers import load_routed_manifest

PR_SET_PDEATHSIG = 1  # linux/prctl.h
LOG_LEVELS = ["critical", "error", "warning", "info", "debug"]


def add_serve_commands(commands: argparse._SubParsersAction, config_option: Callable) -> None:
    """Add `serve` to the grace command."""
    serve = commands.add_parser("serve", help="the HTTP API (the seed's endpoints) on 127.0.0.1:8000")
    config_option(serve)
    serve.add_argument("--host", help="address to bind (default: api.host in grace.yaml, 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port (default: api.port in grace.yaml, 8000; 0 picks a free one)")
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding an address other than loopback; grace.yaml must then set api.token",
    )
    serve.add_argument(
        "--dagster-home", help="the Dagster home routing stats read (default: $DAGSTER_HOME or state_dir)"
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="uvicorn's log level (default info)")
    serve.add_argument("--no-access-log", action="store_true", help="do not log every request")
    serve.set_defaults(handler=_serve)


def remote_refusal(host: str, allow_remote: bool, token: str | None) -> str | None:
    """Why the API may not bind host, or None: anything but loopback needs --allow-remote and api.token."""
    if host in LOOPBACK_HOSTS:
        return None
    if not allow_remote:
        return (
            f"grace serve: {host} is not a loopback address, so the API would be open to the network; "
            "pass --allow-remote and set api.token in grace.yaml (env:NAME or file:PATH), or bind 127.0.0.1"
        )
    if token is None:
        return (
            f"grace serve: binding {host} with --allow-remote needs a token: set api.token in grace.yaml to "
            "env:NAME or file:PATH holding a key (`head -c 32 /dev/urandom | base64`); clients send "
            "`Authorization: Bearer <key>`"
        )
    return None


def _serve(args: argparse.Namespace) -> int:
    from grace.http.app import build_app
    from grace.http.ingest import ServeRefused

    manifest_path = Path(args.config or os.environ.get("GRACE_CONFIG") or DEFAULT_MANIFEST).resolve()
    manifest = load_routed_manifest(manifest_path)
    host = args.host or manifest.api.host
    port = manifest.api.port if args.port is None else args.port
    refusal = remote_refusal(host, args.allow_remote, manifest.api.token)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    other = read_discovery(manifest)
    if other is not None and _answers(other["url"]):
        print(
            f"grace serve: pid {other['pid']} already serves this state dir at {other['url']} "
            f"({discovery_path(manifest)}); stop it first, or give this grace.yaml its own state_dir",
            file=sys.stderr,
        )
        return 2
    try:
        app = build_app(manifest, manifest_path, dagster_home=Path(args.dagster_home) if args.dagster_home else None)
    except ServeRefused as refused:
        print(refused, file=sys.stderr)
        return 2
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=5,
    )
    server = _discoverable_server(config, manifest)
    server.run()
    return 0 if server.started else 1


def _answers(url: str) -> bool:
    """Whether a Grace API answers GET /health at url (a crashed server's pid may belong to another process now)."""
    try:
        return request_json(url, "GET", "/health")[0] == 200
    except ApiUnavailable:
        return False


def _discoverable_server(config, manifest: Manifest):
    """uvicorn's Server, writing <state_dir>/api.json once its socket is bound and removing it at shutdown."""
    import uvicorn

    class DiscoverableServer(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()
                write_discovery(manifest, client_url(config.host, bound[1]), manifest.api.token is not None)

        async def shutdown(self, sockets=None) -> None:
            remove_discovery(manifest)  # first: from now on, clients search locally
            await super().shutdown(sockets)

    return DiscoverableServer(config)


def client_url(host: str, port: int) -> str:
    """The URL a local client uses for a server bound to host: a wildcard address is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write_discovery(manifest: Manifest, url: str, token_required: bool) -> None:
    """api.json, written whole (temporary file, then rename), so a reader never sees half of it."""
    path = discovery_path(manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"url": url, "pid": os.getpid(), "token_required": token_required}) + "\n")
    os.replace(temporary, path)


def remove_discovery(manifest: Manifest) -> None:
    """Remove api.json if it is this process's (a second server's file is not ours to remove)."""
    path = discovery_path(manifest)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def api_child_problem(manifest: Manifest, port: int) -> str | None:
    """Why `grace dev` cannot serve the API beside Dagster, or None: a remote api.host, or a port in use."""
    if remote_refusal(manifest.api.host, False, manifest.api.token):
        return (
            f"grace dev: api.host is {manifest.api.host}, not loopback; grace dev serves the API on loopback only. "
            "Set api.host: 127.0.0.1, or pass --no-api (or api.with_dev: false) and run "
            "`grace serve --allow-remote` with api.token set"
        )
    import socket

    family = socket.AF_INET6 if ":" in manifest.api.host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((manifest.api.host, port))
        except OSError as error:
            return (
                f"grace dev: the HTTP API cannot listen on {manifest.api.host}:{port} ({error.strerror}); "
                "pass --api-port, set api.port in grace.yaml, or pass --no-api"
            )
    return None


def start_api_child(manifest_path: Path, port: int, environment: dict[str, str]) -> subprocess.Popen:
    """`grace serve` for `grace dev`: in grace dev's process group, and sent SIGTERM when grace dev's process ends.

    grace dev then execs `dagster dev`, which keeps its pid, so the child lives exactly as long as
    the dagster dev that replaces it.
    """
    parent = os.getpid()

    def die_with_parent() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            os._exit(70)  # not on Linux: better no API than an orphan
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(0)

    command = [
        sys.executable,
        "-m",
        "grace.cli.main",
        "serve",
        "--config",
        str(manifest_path),
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value

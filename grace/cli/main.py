"""The `grace` command: validate the manifest, serve Dagster, search, report index stats, route tasks, keys."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from grace.cli.drill import add_drill_command
from grace.cli.keys import add_key_commands, ensure_key_file
from grace.cli.model import add_model_commands, ensure_model
from grace.cli.search import add_search_command
from grace.cli.sources import add_sources_command
from grace.cli.status import add_status_command
from grace.cli.sync import add_sync_command
from grace.cli.tasks import add_task_commands, positive_int, print_drift
from grace.core.manifest import DEFAULT_MANIFEST, ManifestError
from grace.core.names import DEV_LOCK, WEBSERVER_ENV
from grace.core.secrets import SecretError, parse_secret_ref
from grace.http.serve import add_serve_commands, api_child_problem, client_url, start_api_child
from grace.resources.tasks.project_handlers import load_routed_manifest


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
        sys.stdout.flush()  # here, so that a closed pipe raises inside the try
        return code
    except ManifestError as error:
        print(error, file=sys.stderr)
        return 2
    except SecretError as error:  # a KEK missing, unsafe or not a key: the message names where it looked
        print(f"grace: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if not _is_key_error(error):
            raise
        print(f"grace: {error}", file=sys.stderr)
        return 2
    except SQLAlchemyError as error:
        problem = str(error).splitlines()[0]
        print(
            f"grace: the store failed: {problem}\n"
            "check `store:` in grace.yaml and that its database is running and reachable",
            file=sys.stderr,
        )
        return 1
    except BrokenPipeError:
        # The reader left (`grace stats | head -1`): the standard Python recipe. Point stdout
        # at devnull so the interpreter's final flush cannot fail again, and exit quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grace", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check grace.yaml and say what is wrong")
    validate.add_argument("path", nargs="?", help=f"manifest file (default: $GRACE_CONFIG or {DEFAULT_MANIFEST})")
    validate.set_defaults(handler=_validate)

    dev = commands.add_parser("dev", help="render the Dagster instance and run `dagster dev`")
    _config_option(dev)
    dev.add_argument("--port", type=_port, help="UI port (default: daemon.port in grace.yaml)")
    dev.add_argument(
        "--dagster-home",
        help="Dagster home to render dagster.yaml into and run in (default: state_dir/dagster_home); "
        "a DAGSTER_HOME in the environment is not used, so an existing instance is never overwritten",
    )
    dev.add_argument("--no-api", action="store_true", help="do not serve the HTTP API beside Dagster")
    dev.add_argument("--api-port", type=_port, help="HTTP API port (default: api.port in grace.yaml)")
    dev.set_defaults(handler=_dev)

    add_search_command(commands, _config_option)
    add_sources_command(commands, _config_option)

    stats = commands.add_parser("stats", help="embeddings, index coverage and documents per shard")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _config_option(stats)
    stats.set_defaults(handler=_stats)

    store = commands.add_parser("store", help="the store's schema revision and its migrations")
    store_commands = store.add_subparsers(required=True, metavar="STORE_COMMAND")
    upgrade = store_commands.add_parser("upgrade", help="migrate the store to this Grace's schema (also done at open)")
    _config_option(upgrade)
    upgrade.set_defaults(handler=_store_upgrade)
    version = store_commands.add_parser("version", help="print the store's schema revision")
    _config_option(version)
    version.set_defaults(handler=_store_version)

    add_task_commands(commands, _config_option)
    add_key_commands(commands, _config_option)
    add_model_commands(commands, _config_option)
    add_status_command(commands, _config_option)
    add_sync_command(commands, _config_option)
    add_drill_command(commands)
    add_serve_commands(commands, _config_option)
    return parser


def _is_key_error(error: BaseException) -> bool:
    """A KeyVaultError (wrong KEK, refused destroy), told apart without importing the vault into every command."""
    key_tables = sys.modules.get("grace.resources.db.key_tables")  # loaded with anything that raises one
    return key_tables is not None and isinstance(error, key_tables.KeyVaultError)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help=f"manifest file (default: $GRACE_CONFIG or {DEFAULT_MANIFEST})")


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, got {value}")
    return value


def _validate(args: argparse.Namespace) -> int:
    manifest = load_routed_manifest(args.path)
    names = ", ".join(source.name for source in manifest.sources) or "none"
    print(
        f"ok: {len(manifest.sources)} source(s) ({names}), {manifest.index.shards} shard(s), "
        f"store {manifest.store_url}, KEK from {parse_secret_ref(manifest.keys.kek).describe()}"
    )
    return 0


def _dev(args: argparse.Namespace) -> int:
    from grace.api import check_kek
    from grace.deploy.instance import render_instance, rendered_drift
    from grace.resources.embedding.embedder import OFFLINE_ENVIRONMENT

    manifest_path = Path(args.config or os.environ.get("GRACE_CONFIG") or DEFAULT_MANIFEST).resolve()
    manifest = load_routed_manifest(manifest_path)
    if not _lock_state_dir(manifest.state_dir):
        return 2
    created = ensure_key_file(manifest)
    if created:
        print(created, flush=True)
    check_kek(manifest)  # a missing or wrong KEK stops the start here, not in every run
    ensure_model(manifest)  # built once here, not by the first runs at once
    for folder in [*(source.path for source in manifest.sources), manifest.routing.inbox]:
        folder.mkdir(parents=True, exist_ok=True)
    home = Path(args.dagster_home or manifest.dagster_home).resolve()
    workspace = render_instance(manifest, home, manifest_path.parent)
    # Read back the way the daemon will read it: capacity and quotas must survive the round trip.
    drift = rendered_drift(home, manifest.routing)
    if drift:
        print_drift(
            home,
            drift,
            "grace dev: not starting a daemon that would not enforce grace.yaml's routing. Dagster reads the "
            "dagster.yaml just rendered differently from what Grace wrote: check that grace and dagster are "
            "the versions installed together (`make dev` installs them).",
        )
        return 2
    port = args.port or manifest.daemon.port
    api_port = args.api_port or manifest.api.port
    serves_api = manifest.api.with_dev and not args.no_api
    problem = api_child_problem(manifest, api_port) if serves_api else None
    if problem:
        print(problem, file=sys.stderr)
        return 2
    environment = {
        **os.environ,
        **OFFLINE_ENVIRONMENT,
        "DAGSTER_HOME": str(home),
        "GRACE_CONFIG": str(manifest_path),
        WEBSERVER_ENV: f"{manifest.daemon.host}:{port}",
    }
    dagster = str(Path(sys.executable).with_name("dagster"))
    command = [dagster, "dev", "-h", manifest.daemon.host, "-p", str(port), "-w", str(workspace)]
    watched = ", ".join(str(source.path) for source in manifest.sources) or "no folders (add sources to grace.yaml)"
    api = ""
    if serves_api:
        start_api_child(manifest_path, api_port, environment)
        api = f"; API on {client_url(manifest.api.host, api_port)}"
    print(
        f"grace: watching {watched}; task files in {manifest.routing.inbox}; "
        f"UI on http://{manifest.daemon.host}:{port}{api}",
        flush=True,
    )
    # A shell that ignores SIGINT would pass that on, and dagster dev copies it to SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.chdir(manifest_path.parent)
    os.execvpe(command[0], command, environment)


def _lock_state_dir(state_dir: Path) -> bool:
    """Hold state_dir/grace-dev.lock (with our pid in it) for as long as this process and what it execs live.

    False, after saying who holds it, if another `grace dev` serves the state dir.
    """
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / DEV_LOCK
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        print(
            f"grace dev: state dir {state_dir} is already served by another `grace dev` (pid {holder}, lock {path}); "
            "stop that one first, or give this grace.yaml its own state_dir",
            file=sys.stderr,
        )
        return False
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    # exec keeps the pid and every inheritable descriptor, so dagster dev goes on holding the lock.
    os.set_inheritable(descriptor, True)
    return True


def _stats(args: argparse.Namespace) -> int:
    from grace.api import stats as grace_stats
    from grace.resources.store.not_read import describe_not_read

    stats = grace_stats(args.config)
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    columns = [
        "total_embeddings",
        "indexed_embeddings",
        "pending",
        "tombstoned",
        "index_coverage",
        "documents_active",
        "documents_quarantined",
    ]
    print("shard  " + "  ".join(columns))
    for row in [*stats["shards"], {"shard": "all", **stats["total"]}]:
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        print(f"{row['shard']!s:>5}  " + "  ".join(cell.rjust(len(c)) for cell, c in zip(cells, columns)))
    for row in stats["shards"]:
        if row["index_problem"]:
            print(f"index damaged: {row['index_problem']}; searched exactly until rebuild_index rebuilds it")
    for item in stats["quarantined"]:
        print(f"quarantined {item['source']}/{item['path']}: {item['reason']}")
    for source, described in describe_not_read(stats["not_read"]).items():
        print(f"not read in {source}: {described}")
    for held in stats["deletes_held"]:
        print(
            f"documents of {held['source']}: {held['described']}; `grace sources release {held['source']}` applies them"
        )
    if stats["reembedding"]:
        progress = stats["reembedding"]
        print(
            f"re-embedding for {progress['target_model_id']}: {progress['chunks_left']} of {progress['chunks']} chunks "
            f"left; search answers from {stats['model_id']} until then"
        )
    return 0


def _on_store(args: argparse.Namespace, action):
    """(store URL, action(engine, url)) for the manifest's store, disposing of the engine after."""
    from grace.resources.db.schema import make_engine

    url = load_routed_manifest(args.config).store_url
    engine = make_engine(url)
    try:
        return url, action(engine, url)
    finally:
        engine.dispose()


def _store_upgrade(args: argparse.Namespace) -> int:
    from grace.resources.db.migrations import StoreTooNew, masked_url, upgrade

    try:
        url, (before, after) = _on_store(args, upgrade)
    except StoreTooNew as error:
        print(f"grace store upgrade: {error}", file=sys.stderr)
        return 2
    if before == after:
        print(f"store {masked_url(url)}: already at revision {after}")
    else:
        print(f"store {masked_url(url)}: upgraded from revision {before or 'none (empty)'} to {after}")
    return 0


def _store_version(args: argparse.Namespace) -> int:
    from grace.resources.db.migrations import HEAD, current_revision, masked_url

    url, revision = _on_store(args, lambda engine, _url: current_revision(engine))
    print(f"store {masked_url(url)}: revision {revision or 'none (empty)'}; this Grace's newest is {HEAD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

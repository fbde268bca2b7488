"""The `grace` command: validate the manifest, serve Dagster, search, and report index stats."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from grace.core.manifest import DEFAULT_MANIFEST, ManifestError, load_manifest


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ManifestError as error:
        print(error, file=sys.stderr)
        return 2


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
    dev.set_defaults(handler=_dev)

    search = commands.add_parser("search", help="semantic search over everything ingested")
    search.add_argument("query", help="what to look for, in your own words")
    search.add_argument("-k", type=_positive_int, default=5, help="number of results (default 5)")
    search.add_argument("--json", action="store_true", help="print JSON instead of text")
    _config_option(search)
    search.set_defaults(handler=_search)

    stats = commands.add_parser("stats", help="embeddings, index coverage and documents per shard")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _config_option(stats)
    stats.set_defaults(handler=_stats)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help=f"manifest file (default: $GRACE_CONFIG or {DEFAULT_MANIFEST})")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, got {value}")
    return value


def _validate(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.path)
    names = ", ".join(source.name for source in manifest.sources) or "none"
    print(
        f"ok: {len(manifest.sources)} source(s) ({names}), {manifest.index.shards} shard(s), store {manifest.store_url}"
    )
    return 0


def _dev(args: argparse.Namespace) -> int:
    from grace.instance import render_instance
    from grace.resources.embedder import OFFLINE_ENVIRONMENT

    manifest_path = Path(args.config or os.environ.get("GRACE_CONFIG") or DEFAULT_MANIFEST).resolve()
    manifest = load_manifest(manifest_path)
    for source in manifest.sources:
        source.path.mkdir(parents=True, exist_ok=True)
    home = Path(args.dagster_home or manifest.dagster_home).resolve()
    workspace = render_instance(manifest, home, manifest_path.parent)
    environment = {**os.environ, **OFFLINE_ENVIRONMENT, "DAGSTER_HOME": str(home), "GRACE_CONFIG": str(manifest_path)}
    port = args.port or manifest.daemon.port
    dagster = str(Path(sys.executable).with_name("dagster"))
    command = [dagster, "dev", "-h", manifest.daemon.host, "-p", str(port), "-w", str(workspace)]
    watched = ", ".join(str(source.path) for source in manifest.sources) or "no folders (add sources to grace.yaml)"
    print(f"grace: watching {watched}; UI on http://{manifest.daemon.host}:{port}", flush=True)
    # A shell that ignores SIGINT would pass that on, and dagster dev copies it to SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.chdir(manifest_path.parent)
    os.execvpe(command[0], command, environment)


def _search(args: argparse.Namespace) -> int:
    from grace.api import search
    from grace.resources.search import hit_dict

    if not args.query.strip():
        print("grace search: the query is empty; pass some words to search for", file=sys.stderr)
        return 2
    hits = search(args.query, args.k, args.config)
    if args.json:
        print(json.dumps([hit_dict(hit) for hit in hits], indent=1))
        return 0
    if not hits:
        print("no results: nothing is ingested yet (see `grace stats`)")
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit.text.split())[:160]
        print(f"{rank:>2}. {hit.score:.3f}  {hit.source}/{hit.path} #{hit.chunk}\n    {snippet}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from grace.api import stats as grace_stats

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
    for item in stats["quarantined"]:
        print(f"quarantined {item['source']}/{item['path']}: {item['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`grace sources`: each watched folder and the deletes held back for it; `release` applies them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from grace.resources.tasks.project_handlers import load_routed_manifest
from grace.resources.wiring.services import open_manifest_store


def add_sources_command(commands: argparse._SubParsersAction, config_option: Callable) -> None:
    """Add `grace sources [list | release NAME]` to the grace command."""
    sources = commands.add_parser("sources", help="the watched folders, and deletes held back for them")
    config_option(sources)
    sources.set_defaults(handler=_list)
    actions = sources.add_subparsers(metavar="SOURCES_COMMAND")
    listing = actions.add_parser("list", help="each source, its folder, and any deletes held (the default)")
    _config_here_too(listing)
    listing.set_defaults(handler=_list)
    release = actions.add_parser("release", help="let the next scan apply a source's held deletes")
    release.add_argument("name", help="the source, as grace.yaml names it")
    _config_here_too(release)
    release.set_defaults(handler=_release)


def _config_here_too(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: left out, it must not reset a -c given before the subcommand (`grace sources -c F list`).
    parser.add_argument("-c", "--config", default=argparse.SUPPRESS, help="manifest file, as for `grace sources`")


def _list(args: argparse.Namespace) -> int:
    manifest = load_routed_manifest(args.config)
    store = open_manifest_store(manifest)
    try:
        for source in manifest.sources:
            held = store.holds.of(source.name)
            print(f"{source.name}: {source.path}" + (f": {held.describe()}" if held else ""))
    finally:
        store.dispose()
    return 0


def _release(args: argparse.Namespace) -> int:
    manifest = load_routed_manifest(args.config)
    names = [source.name for source in manifest.sources]
    if args.name not in names:
        print(
            f"grace sources release: no source {args.name!r} in grace.yaml; its sources: {', '.join(names)}",
            file=sys.stderr,
        )
        return 2
    store = open_manifest_store(manifest)
    try:
        held = store.holds.release(args.name)
    finally:
        store.dispose()
    if held is None:
        print(f"{args.name}: no deletes are held; nothing to release")
        return 0
    print(
        f"{args.name}: released {held.describe()}; the next scan of the folder applies them and takes those "
        "documents out of search"
    )
    return 0

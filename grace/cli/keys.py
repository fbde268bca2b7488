"""The `grace keys` subcommands: status, rotate, rewrap, destroy and rotate-kek; and the quick start's key file."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from grace.core.manifest import Manifest
from grace.core.secrets import SecretError, create_key_file, parse_secret_ref

STATUS_COLUMNS = ["version", "status", "created_at", "age_days", "rotate_after", "rows"]


class KeyFileMissing(SecretError):
    """grace.yaml names a key file that is not there; Grace creates only the default one, on a new store."""


def add_key_commands(commands: argparse._SubParsersAction, config_option: Callable) -> None:
    """Add `keys status|rotate|rewrap|destroy|rotate-kek` to the grace command."""
    keys = commands.add_parser("keys", help="the data keys that encrypt text in the store, and the KEK")
    key_commands = keys.add_subparsers(required=True, metavar="KEYS_COMMAND")

    status = key_commands.add_parser("status", help="each key version's status, age and rows; the KEK's source")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    config_option(status)
    status.set_defaults(handler=_status)

    rotate = key_commands.add_parser(
        "rotate", help="a new primary version if the current one is due, then rewrap rows and destroy unused versions"
    )
    rotate.add_argument("--force", action="store_true", help="rotate now, even if the primary is not due")
    config_option(rotate)
    rotate.set_defaults(handler=_rotate)

    rewrap = key_commands.add_parser("rewrap", help="re-encrypt every row under an older version to the primary")
    config_option(rewrap)
    rewrap.set_defaults(handler=_rewrap)

    destroy = key_commands.add_parser("destroy", help="erase a key version that no row uses (refused otherwise)")
    destroy.add_argument("version", type=int, metavar="VERSION")
    config_option(destroy)
    destroy.set_defaults(handler=_destroy)

    rotate_kek = key_commands.add_parser(
        "rotate-kek", help="rewrap every data key under a new KEK; rows are not touched"
    )
    rotate_kek.add_argument(
        "--new-kek", required=True, help="where the new KEK lives: env:NAME or file:PATH (mode 0600)"
    )
    config_option(rotate_kek)
    rotate_kek.set_defaults(handler=_rotate_kek)


def ensure_key_file(manifest: Manifest) -> str | None:
    """Create the default key file on a first start; the message to print, or None when there was nothing to do.

    Only the default (keys.kek left out of grace.yaml) is ever created, and only for a store that
    has no data keys yet: a key file named in grace.yaml, or one a store's keys were wrapped with,
    must be restored from its backup, since a new key would open nothing.
    """
    reference = parse_secret_ref(manifest.keys.kek)
    if reference.kind != "file" or os.path.lexists(reference.path):
        return None
    if "kek" in manifest.keys.model_fields_set:
        raise KeyFileMissing(
            f"keys.kek in grace.yaml names {reference.describe()}, which does not exist; restore it from your "
            "backup (Grace creates only the default key file, when keys.kek is left out)"
        )
    from grace.api import stored_key_versions

    versions = stored_key_versions(manifest)
    if versions:
        raise KeyFileMissing(
            f"no {reference.describe()}, but the store {manifest.store_url} holds {versions} data key version(s) "
            "wrapped by the KEK that was there; restore the key file from your backup"
        )
    create_key_file(reference.path)
    return (
        f"grace: created the key-encryption key {reference.path} (mode 0600). Back it up somewhere safe, apart "
        "from the store: without it the text in the store cannot be read."
    )


def _status(args: argparse.Namespace) -> int:
    from grace import api

    status = api.key_status(args.config)
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    print(f"KEK: {status['kek']}")
    if not status["versions"]:
        print("no key versions yet: the first text written or `grace keys rotate` creates version 1")
        return 0
    rows = [[_cell(version[column]) for column in STATUS_COLUMNS] for version in status["versions"]]
    _print_table(STATUS_COLUMNS, rows)
    if status["primary"] is not None:
        overdue = "OVERDUE: run `grace keys rotate`" if status["primary_overdue"] else "not overdue"
        print(
            f"primary: version {status['primary']}, {status['primary_age_days']} days old, "
            f"due {status['primary_rotate_after']}; {overdue}"
        )
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from grace import api

    report = api.rotate_keys(args.force, args.config, via="cli")
    if report["rotated"]:
        print(f"rotated: version {report['primary']} is the primary, due {report['rotate_after']}")
    else:
        print(
            f"not due: version {report['primary']} stays primary until {report['rotate_after']} (--force rotates now)"
        )
    _print_rewrapped(report["rewrapped"], report["primary"])
    for version in report["destroyed"]:
        print(f"destroyed version {version}: no row used it")
    for version, reason in report["kept"].items():
        print(f"kept version {version}: {reason}")
    return 0


def _rewrap(args: argparse.Namespace) -> int:
    from grace import api

    report = api.rewrap_keys(args.config, via="cli")
    _print_rewrapped(report["rewrapped"], report["primary"])
    return 0


def _destroy(args: argparse.Namespace) -> int:
    from grace import api
    from grace.resources.keys.vault import DestroyRefused

    try:
        api.destroy_key(args.version, args.config, via="cli")
    except DestroyRefused as refusal:
        print(f"grace keys destroy: {refusal}", file=sys.stderr)
        return 2
    print(f"destroyed key version {args.version}: its data key is erased from the store")
    return 0


def _rotate_kek(args: argparse.Namespace) -> int:
    from grace import api

    report = api.rotate_kek(args.new_kek, args.config, via="cli")
    print(
        f"rewrapped {report['versions']} data key(s) under the KEK from {report['to']}; no row changed.\n"
        f"Now set `kek: {report['to']}` under keys: in grace.yaml and restart Grace: the KEK from "
        f"{report['from']} no longer opens this store. Back up the new KEK before deleting the old one."
    )
    return 0


def _print_rewrapped(rewrapped: dict[str, int], primary: int) -> None:
    total = sum(rewrapped.values())
    detail = ", ".join(f"{column} {rows}" for column, rows in rewrapped.items())
    print(f"rewrapped {total} row(s) to version {primary} ({detail})")


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())

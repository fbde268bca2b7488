"""`grace status`: one screen with grace dev, the webserver, the daemon, the API, sensors, pending work,
index coverage per shard, files not read, key ages and routing per origin."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

INDEX_COLUMNS = ["shard", "total_embeddings", "indexed_embeddings", "pending", "tombstoned", "index_coverage"]
ROUTING_COLUMNS = ["current_count", "queued", "quota_used", "sla_breaches", "succeeded", "failed"]


def add_status_command(commands: argparse._SubParsersAction, config_option: Callable) -> None:
    """Add `grace status [--json]` to the grace command."""
    status = commands.add_parser(
        "status", help="grace dev, webserver, daemon and API up or down; sensors, pending work, index, keys, routing"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object instead of the screen")
    status.add_argument("--dagster-home", help="the daemon's Dagster home (default: $DAGSTER_HOME, else state_dir's)")
    config_option(status)
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from grace.cli.status_report import gather

    report = gather(args.config, args.dagster_home)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_status(report)
    # Everything else is shown even when it failed; a store that cannot be opened is the one failure that
    # means Grace itself is not usable here.
    return 1 if "error" in report["store"] else 0


def print_status(report: dict[str, Any]) -> None:
    """The human screen: a line per process, then sensors, pending work, index, keys and routing."""
    print(f"grace status: {report['manifest']} (state dir {report['state_dir']})")
    _processes(report)
    _sensors(report["sensors"])
    _store(report["store"], report["routing"])
    _keys(report["keys"])
    _routing(report["routing"])


def _processes(report: dict[str, Any]) -> None:
    dev = report["grace_dev"]
    if "error" in dev:
        _line("grace dev", f"unknown: {dev['error']}")
    else:
        _line("grace dev", f"up, pid {dev['pid']}" if dev["running"] else f"down (no process holds {dev['lock']})")
    web = report["webserver"]
    _line("webserver", _up_down(web, lambda: web["url"]))
    daemon = report["daemon"]
    if "error" in daemon:
        _line("daemon", f"unknown: {daemon['error']}")
    else:
        ages = daemon["heartbeat_age_seconds"]
        beating = [age for age in ages.values() if age is not None]
        newest = f", newest heartbeat {min(beating)} s ago" if beating else ", no heartbeat ever"
        stale = "" if daemon["up"] else f"; stale or missing: {', '.join(daemon['stale'])}"
        _line("daemon", f"{'up' if daemon['up'] else 'down'}: {len(ages)} daemons{newest}{stale}")
    api = report["api"]
    _line("api", _up_down(api, lambda: f"{api['url']} (pid {api['pid']})"))


def _up_down(found: dict[str, Any], where: Callable[[], str]) -> str:
    if "error" in found:
        return f"unknown: {found['error']}"
    if found["up"]:
        return f"up, {where()}"
    return f"down: {found['problem']}"


def _sensors(found: dict[str, Any]) -> None:
    if "error" in found:
        _line("sensors", found["error"])
        return
    if not found["sensors"]:
        _line("sensors", "none has ticked yet (the daemon starts them)")
        return
    print("sensors")
    width = max(len(sensor["name"]) for sensor in found["sensors"])
    for sensor in found["sensors"]:
        if sensor["last_tick_age_seconds"] is None:
            tick = "no tick yet"
        else:
            tick = f"last tick {sensor['last_tick_age_seconds']} s ago: {sensor['last_tick_status']}"
        error = f" ({sensor['last_tick_error']})" if sensor["last_tick_error"] else ""
        print(f"  {sensor['name']:<{width}}  {sensor['state']:<7}  {tick}{error}")


def _store(found: dict[str, Any], routing: dict[str, Any]) -> None:
    from grace.resources.store.not_read import describe_not_read  # not at import: every `grace` command loads this

    if "error" in found:
        _line("store", f"cannot be opened: {found['error']}")
        return
    pending = found["pending"]
    tasks = ", ".join(f"{status} {count}" for status, count in pending["tasks"].items())
    runs = f"; runs queued {routing['queued']}, running {routing['running']}" if "error" not in routing else ""
    print("pending work")
    print(
        f"  documents pending {pending['documents_pending']}, to read {pending['documents_to_read']}; "
        f"chunks without vectors {pending['chunks_without_vectors']}; "
        f"vectors not indexed {pending['vectors_not_indexed']}"
    )
    print(f"  tasks {tasks}{runs}")
    print(f"index ({found['model_id']})")
    rows = [[_cell(row[column]) for column in INDEX_COLUMNS] for row in found["shards"]]
    rows.append(["all", *(_cell(found["total"][column]) for column in INDEX_COLUMNS[1:])])
    _table(INDEX_COLUMNS, rows)
    for row in found["shards"]:
        if row["index_problem"]:
            print(f"  shard {row['shard']} index damaged: {row['index_problem']}")
    for source, described in describe_not_read(found["not_read"]).items():
        _line("not read", f"{source}: {described}")
    for held in found["deletes_held"]:
        _line("documents", f"{held['source']}: {held['described']}")


def _keys(found: dict[str, Any]) -> None:
    if "error" in found:
        _line("keys", f"unavailable: {found['error']}")
        return
    if found["primary"] is None:
        _line("keys", "no key version yet (the first text written creates version 1)")
        return
    overdue = "OVERDUE: run `grace keys rotate`" if found["primary_overdue"] else "not overdue"
    rows = ", ".join(
        f"v{version['version']} {version['status']} {version['rows']} rows"
        for version in found["versions"]
        if version["status"] != "destroyed"
    )
    _line(
        "keys",
        f"primary v{found['primary']}, {found['primary_age_days']} days old, due {found['primary_rotate_after']} "
        f"({overdue}); {rows}",
    )


def _routing(found: dict[str, Any]) -> None:
    if "error" in found:
        problem = found["error"]
        if problem.startswith("NoInstance"):
            problem = f"no Dagster instance yet ({problem.partition(': ')[2]})"
        _line("routing", problem)
        return
    drift = f"; DRIFT from grace.yaml: {'; '.join(found['instance_drift'])}" if found["instance_drift"] else ""
    print(f"routing (capacity {found['capacity']}, running {found['running']}, queued {found['queued']}{drift})")
    rows = [
        [origin, *(_cell(figures[column]) for column in ROUTING_COLUMNS)]
        for origin, figures in sorted(found["origins"].items())
    ]
    _table(["origin", *ROUTING_COLUMNS], rows)


def _line(label: str, text: str) -> None:
    print(f"{label:<10} {text}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))]
        print("  " + "  ".join(cells))

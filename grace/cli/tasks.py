"""The `grace` subcommands of routing: submit a task, show tasks, and the run queue's per-origin stats."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grace.core.task_model import PRIORITY_LEVELS, TaskRejected
from grace.resources.tasks.project_handlers import load_routed_manifest

DEFAULT_ORIGIN = "cli"
DRIFT_EXIT_STATUS = 3
STATS_COLUMNS = [
    "current_count",
    "queued",
    "quota_used",
    "utilization",
    "sla_breaches",
    "queue_wait_p50_ms",
    "queue_wait_p95_ms",
]
SHOWN_FIELDS = [
    "status",
    "run_id",
    "type",
    "handler",
    "origin",
    "priority",
    "sla_ms",
    "data_size_bytes",
    "submitted_via",
    "received_at",
    "queued_at",
    "started_at",
    "finished_at",
    "queue_wait_ms",
    "run_ms",
    "sla_met",
    "payload",
    "result",
    "error",
]


def add_task_commands(commands: argparse._SubParsersAction, config_option: Callable) -> None:
    """Add `submit`, `task show|list` and `routing stats` to the grace command."""
    submit = commands.add_parser("submit", help="submit a task; the run queue starts it under its origin's quota")
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("type", nargs="?", help="task type, one of grace.yaml's routing.routes")
    what.add_argument("--file", help="a whole task (or seed intent) JSON document, as dropped in the tasks inbox")
    submit.add_argument("--origin", help=f"who sends it; quotas are per origin (default: {DEFAULT_ORIGIN})")
    submit.add_argument("--priority", type=_priority, help="low, normal (default), high, critical, or -100..100")
    submit.add_argument("--sla-ms", type=int, help="ms from submission to finished (default: routing.default_sla_ms)")
    submit.add_argument("--payload", help="the handler's JSON object, inline or @file")
    submit.add_argument("--task-id", help="an id of your own (default: generated)")
    submit.add_argument("--json", action="store_true", help="print the accepted task as JSON, not just its id")
    config_option(submit)
    submit.set_defaults(handler=_submit, submit_parser=submit)

    task = commands.add_parser("task", help="routed tasks in the store")
    task_commands = task.add_subparsers(required=True, metavar="TASK_COMMAND")
    show = task_commands.add_parser("show", help="a task's status, times, SLA, payload and result")
    show.add_argument("task_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    config_option(show)
    show.set_defaults(handler=_task_show)
    listing = task_commands.add_parser("list", help="tasks by status, oldest first")
    listing.add_argument(
        "--status", action="append", help="received, queued, started, succeeded or failed; repeatable (default: all)"
    )
    listing.add_argument("--limit", type=positive_int, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of one line per task")
    config_option(listing)
    listing.set_defaults(handler=_task_list, list_parser=listing)

    routing = commands.add_parser("routing", help="the run queue that routes tasks")
    routing_commands = routing.add_subparsers(required=True, metavar="ROUTING_COMMAND")
    stats = routing_commands.add_parser("stats", help="per origin: runs, queue, quota use, SLA breaches, waits")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument("--dagster-home", help="the daemon's Dagster home (default: $DAGSTER_HOME, else state_dir's)")
    config_option(stats)
    stats.set_defaults(handler=_routing_stats)


def print_drift(home: Path | str, problems: list[str], fix: str | None = None) -> None:
    """The loud stderr block for an instance whose run queue is not the one grace.yaml asks for."""
    fix = fix or (
        "Capacity and quotas hold only in an instance rendered from grace.yaml: run the daemon with `grace dev`\n"
        f"(it rewrites {Path(home) / 'dagster.yaml'}), or point DAGSTER_HOME at a home `grace dev` rendered."
    )
    lines = [
        "",
        f"WARNING: the Dagster instance at {home} does not enforce grace.yaml's routing:",
        *(f"  - {problem}" for problem in problems),
        fix,
        "",
    ]
    print("\n".join(lines), file=sys.stderr)


def _priority(text: str) -> str | int:
    if text in PRIORITY_LEVELS:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not low, normal, high, critical or a whole number") from None


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _submit(args: argparse.Namespace) -> int:
    from grace import api
    from grace.resources.tasks.inbox import ENVELOPE_BYTES

    if args.file is not None:
        fields = ("origin", "priority", "sla_ms", "payload", "task_id")
        given = [flag for flag in fields if getattr(args, flag) is not None]
        if given:
            flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
            args.submit_parser.error(f"{flags}: not allowed with --file, whose document gives every field")
    limit = int(load_routed_manifest(args.config).routing.max_payload_bytes)
    try:
        if args.file is not None:
            task: dict[str, Any] | bytes = _read_capped(
                args.file,
                limit + ENVELOPE_BYTES,
                f"--file {args.file}",
                "routing.max_payload_bytes, plus room for the rest",
            )
        else:
            task = {
                "type": args.type,
                "origin": DEFAULT_ORIGIN if args.origin is None else args.origin,
                "payload": _payload(args.payload, limit),
                **{
                    key: getattr(args, key)
                    for key in ("task_id", "priority", "sla_ms")
                    if getattr(args, key) is not None
                },
            }
        task_id = api.submit(task, args.config, via="cli")
    except TaskRejected as rejected:
        for where, message in rejected.problems:
            print(f"grace submit: {where}: {message}", file=sys.stderr)
        return 2
    print(json.dumps(api.task(task_id, args.config), indent=1) if args.json else task_id)
    return 0


def _payload(text: str | None, limit: int) -> dict[str, Any]:
    """The --payload object, inline or from @file; TaskRejected naming --payload otherwise."""
    if text is None:
        return {}
    origin = "--payload"
    if text.startswith("@"):
        origin = f"--payload {text}"
        data = _read_capped(text[1:], limit, origin, "routing.max_payload_bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise TaskRejected([(origin, f"is not UTF-8 text (byte {error.start}); save it as UTF-8 JSON")]) from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        problem = f"malformed JSON at line {error.lineno} column {error.colno}: {error.msg}"
        raise TaskRejected([(origin, problem)]) from None
    except ValueError as error:
        raise TaskRejected([(origin, str(error))]) from None
    if not isinstance(value, dict):
        problem = f"must be a JSON object ({{...}}), not {type(value).__name__}"
        raise TaskRejected([(origin, problem)])
    return value


def _read_capped(name: str, limit: int, option: str, cap: str) -> bytes:
    """At most limit bytes of a regular file; TaskRejected naming the option if it is missing, special or bigger."""
    path = Path(name)
    try:
        # O_NONBLOCK: a FIFO named here must not hang the command before it is found not to be a file.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise TaskRejected([(option, f"cannot read it: {error.strerror}")]) from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise TaskRejected([(option, "is not a regular file")])
    with os.fdopen(descriptor, "rb") as file:
        try:
            data = file.read(limit + 1)
        except OSError as error:
            raise TaskRejected([(option, f"cannot read it: {error.strerror}")]) from None
    if len(data) > limit:
        raise TaskRejected([(option, f"is over {limit} bytes ({cap}); send less data")])
    return data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON; use a number or null")


def _task_show(args: argparse.Namespace) -> int:
    from grace import api

    found = api.task(args.task_id, args.config)
    if found is None:
        print(f"grace task show: no task {args.task_id!r}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    print(f"task {found['task_id']}")
    width = max(len(name) for name in SHOWN_FIELDS)
    for name in SHOWN_FIELDS:
        value = found[name]
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
        print(f"  {name:<{width}}  {'-' if shown is None else shown}")
    return 0


def _task_list(args: argparse.Namespace) -> int:
    from grace import api
    from grace.resources.store.taskbook import ENDED_STATUSES, OPEN_STATUSES

    statuses = [*OPEN_STATUSES, *ENDED_STATUSES]
    unknown = sorted(set(args.status or []) - set(statuses))
    if unknown:
        args.list_parser.error(f"argument --status: unknown {', '.join(unknown)}; choose from {', '.join(statuses)}")
    found = api.tasks(args.status or statuses, args.limit, args.config)
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    for item in found:
        print(
            f"{item['task_id']}  {item['status']:<9}  {item['type']}  origin {item['origin']}  "
            f"received {item['received_at']}  sla_met {'-' if item['sla_met'] is None else item['sla_met']}"
        )
    return 0


def _routing_stats(args: argparse.Namespace) -> int:
    from grace import api

    try:
        stats = api.routing_stats(args.config, args.dagster_home)
    except api.NoInstance as error:
        print(f"grace routing stats: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        _print_stats_table(stats)
    sys.stdout.flush()  # before the warning, so a terminal shows the table first
    if stats["instance_drift"]:
        print_drift(stats["dagster_home"], stats["instance_drift"])
        return DRIFT_EXIT_STATUS
    return 0


def _print_stats_table(stats: dict[str, Any]) -> None:
    print(
        f"Dagster instance {stats['dagster_home']}: capacity {stats['capacity']}, running {stats['running']}, "
        f"queued {stats['queued']}; waits and outcomes over the last {stats['window_seconds'] // 60} min"
    )
    rows = [
        [origin, *("-" if figures[column] is None else str(figures[column]) for column in STATS_COLUMNS)]
        for origin, figures in sorted(stats["origins"].items())
    ]
    header = ["origin", *STATS_COLUMNS]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))
            )
        )

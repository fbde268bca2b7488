"""What `grace status` gathers: grace dev, the webserver, the daemon, the HTTP API, sensors, pending work,
index coverage, key ages and routing.

Every part is gathered on its own: a part that fails carries {"error": ...} and the others are still
gathered, so one broken piece never hides the rest.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from grace.core.manifest import DEFAULT_MANIFEST, Manifest
from grace.core.names import DEV_LOCK
from grace.resources.tasks.project_handlers import load_routed_manifest

HEARTBEAT_FRESH_SECONDS = 90.0  # three of the daemon's 30 s heartbeat intervals: one late beat is not a dead daemon
PROBE_SECONDS = 1.0


def gather(config: str | Path | None = None, dagster_home: str | Path | None = None) -> dict[str, Any]:
    """One dict with a key per part; a part that could not be gathered is {"error": "..."}."""
    from grace.api import dagster_home_of

    manifest_path = Path(config or os.environ.get("GRACE_CONFIG") or DEFAULT_MANIFEST).resolve()
    manifest = load_routed_manifest(manifest_path)
    home = dagster_home_of(manifest, dagster_home)
    report: dict[str, Any] = {
        "manifest": str(manifest_path),
        "state_dir": str(manifest.state_dir),
        "dagster_home": str(home),
    }
    report["grace_dev"] = part(lambda: dev_holder(manifest.state_dir))
    report["webserver"] = part(lambda: webserver(manifest, report["grace_dev"].get("pid")))
    report["api"] = part(lambda: api_server(manifest))
    with dagster_instance(home) as instance:
        report["daemon"] = part(lambda: daemon(instance))
        report["sensors"] = part(lambda: sensors(instance))
    report["store"] = part(lambda: store_work(manifest))
    if "error" in report["store"]:
        # Both read the store too: say so once, rather than wait for an unreachable database twice more.
        report["keys"] = report["routing"] = {"error": "needs the store, which cannot be opened (see store)"}
    else:
        report["keys"] = part(lambda: key_status(manifest_path))
        report["routing"] = part(lambda: routing(manifest_path, home))
    return report


class Unavailable(Exception):
    """A part that cannot be shown yet, for a reason the message gives (no instance, no store yet)."""


def part(gather_part: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The part's dict, or {"error": ...}: status shows every failure beside the rest.

    Grace's own errors already say what is wrong and how to fix it; anything else is named by its type.
    """
    try:
        return gather_part()
    except Exception as error:  # noqa: BLE001 (any failure of one part is that part's line, never a crash)
        message = " ".join(str(error).split())[:400]
        if type(error).__module__.startswith("grace") and message:
            return {"error": message}
        return {"error": f"{type(error).__name__}: {message}" if message else type(error).__name__}


def dev_holder(state_dir: Path) -> dict[str, Any]:
    """Whether a `grace dev` holds the state dir's lock, and its pid (the pid alone may be stale)."""
    import fcntl

    path = state_dir / DEV_LOCK
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return {"running": False, "pid": None, "lock": str(path)}
    try:
        pid_text = os.read(descriptor, 32).decode(errors="replace").strip()
        try:
            # Shared and released at once: a `grace dev` starting in this instant would find it taken and
            # refuse to start, but the window is a few microseconds.
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            running = False
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        except BlockingIOError:
            running = True
    finally:
        os.close(descriptor)
    pid = int(pid_text) if pid_text.isdigit() else None
    return {"running": running, "pid": pid if running else None, "lock": str(path)}


def webserver(manifest: Manifest, dev_pid: int | None) -> dict[str, Any]:
    """Whether Dagster's webserver answers /server_info, on the port `grace dev` was started with."""
    port = _port_of(dev_pid) or manifest.daemon.port
    url = f"http://{manifest.daemon.host}:{port}"
    answer = probe(f"{url}/server_info")
    return {"up": answer is None, "url": url, **({"problem": answer} if answer else {})}


def _port_of(pid: int | None) -> int | None:
    """The -p of the `dagster dev` that `grace dev` exec'ed into (grace dev --port overrides grace.yaml)."""
    if pid is None:
        return None
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # no /proc (not Linux), or the process just ended
        return None
    for flag, value in zip(arguments, arguments[1:]):
        if flag in ("-p", "--port") and value.isdigit():
            return int(value)
    return None


def api_server(manifest: Manifest) -> dict[str, Any]:
    """The HTTP API that api.json announces: up when its pid lives and GET /health answers."""
    from grace.http.client import discovery_path, read_discovery

    found = read_discovery(manifest)
    if found is None:
        problem = f"no live server in {discovery_path(manifest)}: `grace serve` (or `grace dev`) is not running"
        return {"up": False, "url": None, "problem": problem}
    answer = probe(f"{found['url']}/health")
    served = {
        "up": answer is None,
        "url": found["url"],
        "pid": found["pid"],
        "token_required": found.get("token_required"),
    }
    return {**served, "problem": answer} if answer else served


def probe(url: str) -> str | None:
    """None when url answers 2xx within PROBE_SECONDS, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_SECONDS):
            return None
    except urllib.error.HTTPError as error:
        return f"GET {url} answered {error.code}"
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        return f"GET {url} failed: {reason}"


@contextmanager
def dagster_instance(home: Path) -> Iterator[Any]:
    """The Dagster instance in home, or the exception that kept it from loading (each part reports it)."""
    if not (home / "dagster.yaml").is_file():
        yield _no_instance(home)
        return
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    from dagster import DagsterInstance

    try:
        instance = DagsterInstance.from_config(str(home))
    except Exception as error:  # noqa: BLE001 (a broken dagster.yaml is the instance parts' error line)
        problem = " ".join(str(error).split())[:300]
        yield Unavailable(
            f"Dagster cannot load the instance at {home}: {type(error).__name__}: {problem}; "
            f"fix {home / 'dagster.yaml'}, or let `grace dev` render it again"
        )
        return
    try:
        yield instance
    finally:
        instance.dispose()


def daemon(instance: Any) -> dict[str, Any]:
    """Each required daemon's last heartbeat age; up when every one beat within HEARTBEAT_FRESH_SECONDS."""
    if isinstance(instance, Exception):
        raise instance
    beats = instance.get_daemon_heartbeats()
    now = time.time()
    ages = {}
    for daemon_type in instance.get_required_daemon_types():
        beat = beats.get(daemon_type)
        ages[daemon_type] = round(now - beat.timestamp, 1) if beat else None
    stale = sorted(name for name, age in ages.items() if age is None or age > HEARTBEAT_FRESH_SECONDS)
    return {"up": bool(ages) and not stale, "heartbeat_age_seconds": ages, "stale": stale}


def sensors(instance: Any) -> dict[str, Any]:
    """Each sensor the instance has a state for: running or stopped, and its last tick's time and status."""
    if isinstance(instance, Exception):
        raise instance
    from dagster._core.definitions.run_request import InstigatorType

    found = []
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
        tick = ticks[0] if ticks else None
        found.append(
            {
                "name": state.instigator_name,
                "state": "running" if state.is_running else "stopped",
                "last_tick_age_seconds": round(time.time() - tick.timestamp, 1) if tick else None,
                "last_tick_status": tick.status.value.lower() if tick else None,
                "last_tick_error": _first_line(tick.error.message) if tick and tick.error else None,
            }
        )
    return {"sensors": sorted(found, key=lambda sensor: sensor["name"])}


def store_work(manifest: Manifest) -> dict[str, Any]:
    """Pending work (documents to read, chunks without vectors, vectors not indexed, open tasks), index
    coverage per shard and the files not read by source and suffix, read from the store without the KEK:
    none of it is text."""
    from grace.resources.index.search import index_stats
    from grace.resources.store.store import Store
    from grace.resources.store.taskbook import OPEN_STATUSES
    from grace.resources.wiring.services import open_embedder, open_index

    require_store(manifest)
    store = Store(manifest.store_url)
    try:
        stats = index_stats(store, open_index(manifest), open_embedder(manifest).model_id)
        tasks = store.tasks.counts_by_status()
        not_read = store.ledger.not_read()
        pending = {
            **store.documents.waiting(),  # documents_pending, documents_to_read
            "chunks_without_vectors": store.serving.chunks_lacking(stats["model_id"]),
            "vectors_not_indexed": stats["total"]["pending"],
            "tasks": {status: tasks.get(status, 0) for status in OPEN_STATUSES},
        }
    finally:
        store.dispose()
    columns = ["shard", "total_embeddings", "indexed_embeddings", "pending", "tombstoned", "index_coverage"]
    shards = [{column: row[column] for column in [*columns, "index_problem"]} for row in stats["shards"]]
    total = {column: stats["total"][column] for column in columns[1:]}
    return {
        "model_id": stats["model_id"],
        "pending": pending,
        "shards": shards,
        "total": total,
        "not_read": not_read,
        "deletes_held": stats["deletes_held"],
    }


def key_status(manifest_path: Path) -> dict[str, Any]:
    from grace.api import key_status as status_of

    return status_of(manifest_path)


def routing(manifest_path: Path, home: Path) -> dict[str, Any]:
    from grace.api import routing_stats

    if not (home / "dagster.yaml").is_file():
        raise _no_instance(home)
    return routing_stats(manifest_path, home)


def require_store(manifest: Manifest) -> None:
    """Unavailable for a SQLite store whose file is not there: opening it would create an empty one."""
    from sqlalchemy import make_url

    url = make_url(manifest.store_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise Unavailable(f"no store yet at {url.database}: `grace dev` creates it")


def _no_instance(home: Path) -> Unavailable:
    return Unavailable(f"no Dagster instance yet at {home} (no dagster.yaml): `grace dev` renders it")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""

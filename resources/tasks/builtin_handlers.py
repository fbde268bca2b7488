"""The built-in task handlers: ingest, search, reindex and rotate_keys, each fn(payload model, TaskContext) -> JSON.

ingest writes a file into a watched folder and nothing more: the folder's sensor picks it up,
so content that arrives as a task follows exactly the path of a dropped file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from grace.core.globs import wanted
from grace.core.handler_api import IngestPayload, ReindexPayload, RotateKeysPayload, SearchPayload, TaskContext
from grace.core.manifest import Manifest, SourceConfig
from grace.core.secrets import parse_secret_ref, resolve_secret
from grace.resources.db.key_tables import KeyStatus
from grace.resources.index.search import Searcher, hit_dict
from grace.resources.index.shard_state import rebuild_shard
from grace.resources.keys.vault import REWRAP_BATCH, DestroyRefused, KeyVault
from grace.resources.runs.lease import HeldShard, ShardLeases, run_has_ended

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
SLUG_CHARACTERS = 60


class IngestRefused(ValueError):
    """The content cannot be written where the task asks; says what to change."""


def ingest(payload: IngestPayload, context: TaskContext) -> dict:
    """Write the content into the source's folder, atomically, at payload.path or a name from the title."""
    manifest = context.manifest
    wanted_name = payload.source or (manifest.sources[0].name if manifest.sources else None)
    source = next((s for s in manifest.sources if s.name == wanted_name), None)
    if source is None:
        raise IngestRefused(f"grace.yaml has no source {wanted_name!r} (any more); name one of its sources")
    relative = payload.path or default_file_name(payload.title, context.task.task_id, source)
    try:
        data = payload.content.encode("utf-8")
    except UnicodeEncodeError as error:
        raise IngestRefused(f"content is not valid Unicode (position {error.start}); send UTF-8 text") from None
    if len(data) > source.max_bytes:
        raise IngestRefused(
            f"content is {len(data)} bytes, over source '{source.name}' max_bytes ({int(source.max_bytes)}): "
            "it would be quarantined; split it or raise max_bytes in grace.yaml"
        )
    write_inside(source.path, relative, data, manifest.state_dir)
    context.log.info(f"task {context.task.task_id}: wrote {len(data)} bytes to {source.name}:{relative}")
    return {"source": source.name, "path": relative, "bytes": len(data)}


def default_file_name(title: str, task_id: str, source: SourceConfig) -> str:
    """The file name <slug of title>-<task id prefix>.md (or .txt): the same on every rerun of the task."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:SLUG_CHARACTERS].strip("-") or "task"
    for extension in (".md", ".txt"):
        name = f"{slug}-{task_id[:8]}{extension}"
        if wanted(name, source):
            return name
    raise IngestRefused(
        f"source '{source.name}' ingests neither .md nor .txt files (patterns {source.patterns}, "
        f"exclude {source.exclude}); give payload.path with a name those patterns match"
    )


def write_inside(root: Path, relative: str, data: bytes, scratch_dir: Path) -> None:
    """Create root/relative with data, atomically, creating its folders, never through a link.

    Each folder on the way is opened with O_NOFOLLOW relative to the one before, so a folder
    swapped for a link cannot lead the write out of root. The complete file appears in one
    link(2), which never replaces an existing file: a user's files are only ever read, and a
    rerun of the same task finds its own bytes already there. The temporary file goes to
    scratch_dir (the state dir) when it shares root's filesystem, where no sensor looks;
    otherwise it is a hidden file beside the target, which the default excludes skip.
    """
    *folders, name = relative.split("/")
    root.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # root itself is grace.yaml's
    try:
        for folder in folders:
            child = _open_folder(descriptor, folder, relative)
            os.close(descriptor)
            descriptor = child
        temporary, temporary_folder = _temporary_file(descriptor, scratch_dir, data)
        try:
            os.link(temporary, name, src_dir_fd=temporary_folder, dst_dir_fd=descriptor, follow_symlinks=False)
        except FileExistsError:
            if not _holds(descriptor, name, data):
                raise IngestRefused(
                    f"{relative} already exists in the source, with other content or not as a file; Grace "
                    "never overwrites a user's file; give another payload.path"
                ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):  # gone once renamed
                os.unlink(temporary, dir_fd=temporary_folder)
    finally:
        os.close(descriptor)


def _open_folder(parent: int, folder: str, relative: str) -> int:
    """Open (creating it if needed) a folder inside the open parent; never a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, dir_fd=parent)
    try:
        return os.open(folder, DIRECTORY_FLAGS, dir_fd=parent)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise IngestRefused(
                f"{folder!r} on the way to {relative} is a link or a file, not a folder; Grace never "
                "writes through links; give another payload.path"
            ) from None
        raise


def _holds(folder: int, name: str, data: bytes) -> bool:
    """Whether name in the open folder is a regular file (not a link) holding exactly data."""
    try:
        descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return False
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(descriptor)
        return stat.S_ISREG(status.st_mode) and status.st_size == len(data) and file.read(len(data) + 1) == data


def _temporary_file(folder: int, scratch_dir: Path, data: bytes) -> tuple[str, int | None]:
    """A complete copy of data on the open folder's filesystem: (path, dir_fd the path is relative to)."""
    scratch_dir.mkdir(parents=True, exist_ok=True)
    if os.stat(scratch_dir).st_dev == os.fstat(folder).st_dev:
        handle, path = tempfile.mkstemp(dir=scratch_dir, prefix="ingest-", suffix=".partial")
        os.fchmod(handle, 0o644)  # mkstemp's 0600 would become the user's file's mode
        where = None
    else:
        path, where = f".grace-{secrets.token_hex(8)}.partial", folder
        handle = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder
        )
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(path, dir_fd=where)
        raise
    return path, where


def search(payload: SearchPayload, context: TaskContext) -> dict:
    """The query's nearest chunks, as `grace search --json` prints them."""
    services = context.services
    searcher = Searcher.configured(services["store"], services["vector_index"], services["embedder"], context.manifest)
    hits = searcher.search(payload.query, payload.k, payload.mode)
    return {"query": payload.query, "hits": [hit_dict(hit) for hit in hits]}


def reindex(payload: ReindexPayload, context: TaskContext) -> dict:
    """Rebuild the named shards (default: all), each while holding its lease, as the vector_index asset does."""
    store, index = context.services["store"], context.services["vector_index"]
    model_id = store.serving.model(context.services["embedder"].model_id)
    instance = context.services.get("instance")
    ended = (lambda holder: run_has_ended(instance, holder)) if instance is not None else (lambda _holder: False)
    leases = ShardLeases(store.engine)
    rebuilt = []
    for shard in payload.shards if payload.shards is not None else range(index.shards):
        # The run's heartbeat is the task heartbeat resource's: the lease alone is taken and released here.
        with HeldShard(leases, context.run_id, shard, context.log, ended, own_heartbeat=False):
            shard_rebuilt = rebuild_shard(store, index, shard, model_id)
        built = shard_rebuilt.built
        context.log.info(f"shard {shard}: built version {built.version} with {built.items} vectors")
        rebuilt.append({"shard": shard, "version": built.version, "items": built.items})
    return {"shards": rebuilt}


def rotate_keys(payload: RotateKeysPayload, context: TaskContext) -> dict:
    """Rotate the data key if it is due (or payload.force), rewrap every encrypted row, destroy unused versions."""
    vault = open_key_vault(context.manifest, context.services["store"].engine, context.run_id)
    report = rotate_and_rewrap(vault, payload.force, context.manifest.keys.rewrap_batch)
    context.log.info(
        f"task {context.task.task_id}: primary key version {report['primary']} "
        f"({'new' if report['rotated'] else 'not due'}), {sum(report['rewrapped'].values())} rows rewrapped"
    )
    return report


def open_key_vault(manifest: Manifest, engine: Engine, run_id: str | None) -> KeyVault:
    """The vault that grace.yaml's keys section describes, over a store's engine; its audit entries carry run_id."""
    keys = manifest.keys
    return KeyVault(
        engine,
        resolve_secret(keys.kek),
        keys.rotate_every,
        keys.min_decryption_versions,
        run_id=lambda: run_id,
        kek_source=parse_secret_ref(keys.kek).describe(),
    )


def rotate_and_rewrap(
    vault: KeyVault, force: bool = False, batch_size: int = REWRAP_BATCH, now: datetime | None = None
) -> dict:
    """What rotate_keys does wherever it runs (its job, a task, `grace keys rotate`), as a JSON report.

    A new primary if the current one is due (or force); every encrypted column rewrapped to the
    primary; then each decrypt-only version below the newest min_decryption_versions is offered to
    destroy(), which refuses while any row (or a recently retired writer) may use it: refusals are
    reported under "kept", never raised.
    """
    created = vault.rotate(now, force)
    primary = vault.ensure_primary()
    rewrapped = vault.rewrap_all(batch_size)
    destroyed, kept = destroy_unused(vault, now)
    return {
        "rotated": created is not None,
        "primary": primary.version,
        "rotate_after": primary.rotate_after.isoformat(timespec="seconds"),
        "rewrapped": rewrapped,
        "destroyed": destroyed,
        "kept": kept,
    }


def destroy_unused(vault: KeyVault, now: datetime | None = None) -> tuple[list[int], dict[str, str]]:
    """(versions destroyed, {version: why it was kept}) of the versions old enough to be destroyed."""
    versions = vault.versions()
    if not versions:
        return [], {}
    lowest_kept = max(version.version for version in versions) - vault.min_decryption_versions + 1
    destroyed, kept = [], {}
    for version in versions:
        if version.status != KeyStatus.DECRYPT_ONLY or version.version >= lowest_kept:
            continue
        try:
            vault.destroy(version.version, now)
            destroyed.append(version.version)
        except DestroyRefused as refusal:
            kept[str(version.version)] = str(refusal)
    return destroyed, kept


BUILTIN_IMPLEMENTATIONS: dict[str, Callable[[Any, TaskContext], Any]] = {
    "ingest": ingest,
    "search": search,
    "reindex": reindex,
    "rotate_keys": rotate_keys,
}

"""Compare a watched folder with the store and record what changed, hashing only what must be."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR

from sqlalchemy import delete, insert, select, update

from grace.core.globs import any_glob, excluded_folder, wanted
from grace.core.manifest import SourceConfig
from grace.resources.reading import content_hash, is_marker, refused_marker
from grace.resources.schema import (
    DocumentRow,
    ObservedFile,
    chunks,
    documents,
    new_document_id,
    shard_key_of,
    utc_now,
)
from grace.resources.store import Store


def list_files(
    root: Path, patterns: Sequence[str], under: str = "", exclude: Sequence[str] = ()
) -> dict[str, os.stat_result]:
    """Entries below root/under that match the patterns and no exclude glob, by /-separated path
    relative to root, with their lstat.

    Links are listed but never followed, and neither are FIFOs or devices opened here: the
    reader quarantines them with a reason. A watched folder never reaches outside itself.
    """
    found: dict[str, os.stat_result] = {}
    included, excluded = any_glob(tuple(patterns)).match, any_glob(tuple(exclude)).match
    prefix_length = len(os.path.join(root, ""))
    stack = [os.path.join(root, under)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            relative = entry.path[prefix_length:]
            if entry.is_dir(follow_symlinks=False):
                if not excluded_folder(relative, exclude):
                    stack.append(entry.path)
            elif included(relative) and not excluded(relative):
                try:
                    found[relative] = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
    return found


@dataclass
class Dirty:
    """Relative paths touched since the last look: files, and folders to list whole."""

    files: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.files) + len(self.folders)


@dataclass
class ScanResult:
    changed: list[ObservedFile] = field(default_factory=list)
    touched: list[ObservedFile] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.changed or self.touched or self.moved or self.deleted)


def diff_folder(source: SourceConfig, known: dict[str, DocumentRow], on_disk: dict[str, os.stat_result]) -> ScanResult:
    """What differs between the store's view of a source and the folder.

    Size and mtime unchanged means unchanged, except for a document whose hash is a marker
    (oversize, unreadable, refused): its cause may have been fixed outside the file (chmod,
    max_bytes, a link replaced), so it is looked at again. Otherwise the content hash
    decides. A new path whose content equals a vanished document's is a rename.
    """
    result = ScanResult()
    vanished = {path: row for path, row in known.items() if path not in on_disk}
    vanished_by_hash = {row.disk_hash: path for path, row in vanished.items()}
    for path, stat in sorted(on_disk.items()):
        row = known.get(path)
        same_stat = row is not None and row.size == stat.st_size and row.mtime_ns == stat.st_mtime_ns
        if same_stat and not is_marker(row.disk_hash):
            continue
        digest = content_hash(source.path, path, int(source.max_bytes))
        if digest is None or (same_stat and row.disk_hash == digest):
            continue
        observed = ObservedFile(path, stat.st_size, stat.st_mtime_ns, digest)
        if row is not None and row.disk_hash == digest:
            result.touched.append(observed)
        elif row is None and digest in vanished_by_hash:
            old_path = vanished_by_hash.pop(digest)
            del vanished[old_path]
            result.moved.append((old_path, path))
            result.touched.append(observed)
        else:
            result.changed.append(observed)
    result.deleted = sorted(vanished)
    return result


def stat_entry(real_root: str, root: Path, relative: str) -> os.stat_result | None:
    """lstat of a non-folder entry, or None if it is gone or a folder on its way is a link.

    The full scan never enters a linked folder; an event for a path through one is treated alike.
    """
    path = os.path.join(root, relative)
    expected_parent = os.path.normpath(os.path.join(real_root, os.path.dirname(relative)))
    if os.path.realpath(os.path.dirname(path)) != expected_parent:
        return None
    try:
        stat = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return None if S_ISDIR(stat.st_mode) else stat


def is_utf8(relative: str) -> bool:
    """False for a name whose bytes are not UTF-8 (Python holds those bytes as lone surrogates)."""
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def stored_path(relative: str) -> str:
    """The path as the store keeps it: itself, or with each non-UTF-8 byte escaped as \\xNN."""
    return relative if is_utf8(relative) else os.fsencode(relative).decode("utf-8", "backslashreplace")


def reconcile(store: Store, source: SourceConfig, dirty: Dirty | None = None) -> ScanResult:
    """Bring the store's view of a folder up to date: all of it, or only the dirty paths.

    Files whose names are not UTF-8 are quarantined under their escaped names and never
    reach the diff, so one bad name cannot stop a source's ticks.
    """
    if dirty is None:
        known = store.documents_of(source.name)
        on_disk = list_files(source.path, source.patterns, exclude=source.exclude)
    else:
        known, on_disk = store.documents_at(source.name, {stored_path(relative) for relative in dirty.files}), {}
        real_root = os.path.realpath(source.path)
        for relative in dirty.files:
            stat = stat_entry(real_root, source.path, relative) if wanted(relative, source) else None
            if stat is not None:
                on_disk[relative] = stat
        for folder in dirty.folders:
            known.update(store.documents_under(source.name, stored_path(folder)))
            on_disk.update(list_files(source.path, source.patterns, under=folder, exclude=source.exclude))
    badly_named = {stored_path(relative): on_disk.pop(relative) for relative in list(on_disk) if not is_utf8(relative)}
    unrecorded = {path: stat for path, stat in badly_named.items() if known.pop(path, None) is None}
    if unrecorded:
        quarantine_bad_names(store, source.name, unrecorded)
    result = diff_folder(source, known, on_disk)
    if not result.empty:
        store.record_scan(source.name, result.changed, result.touched, result.moved, result.deleted)
    return result


def quarantine_bad_names(store: Store, source: str, badly_named: dict[str, os.stat_result]) -> None:
    """Record files whose names are not UTF-8 as quarantined documents, under their escaped names.

    They need no run: nothing of them is read until they are renamed (a new path, a new document).
    """
    now = utc_now()
    with store.engine.begin() as connection:
        for path, stat in sorted(badly_named.items()):
            marker = refused_marker("name", stat.st_size, stat.st_mtime_ns)
            values = dict(
                size=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
                disk_hash=marker,
                processed_hash=marker,
                chunked_hash=None,
                status="quarantined",
                reason=f"file name is not valid UTF-8: {path}; rename it",
                text=None,
                updated_at=now,
            )
            existing = connection.execute(
                select(documents.c.id).where(documents.c.source == source, documents.c.path == path)
            ).first()
            if existing is None:
                document_id = new_document_id(connection, source, path)
                connection.execute(
                    insert(documents).values(
                        id=document_id, source=source, path=path, shard_key=shard_key_of(document_id), **values
                    )
                )
            else:  # a deleted row not yet purged: its chunks must not come back with it
                connection.execute(delete(chunks).where(chunks.c.document_id == existing.id))
                connection.execute(update(documents).where(documents.c.id == existing.id).values(**values))

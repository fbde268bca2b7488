"""Compare a watched folder with the store and record what changed, within a time budget per scan.

A scan looks at size and mtime only: a new or changed file is recorded as unread, and the ingest
run that reads it anyway hashes it. Content is hashed here only to tell a rename from a new file,
and to look again at a file quarantined for a cause that may be fixed outside it. Hashing and
recording stop at the first batch boundary SCAN_BUDGET_SECONDS after the listing; the next scan
lists the folder again, finds what was recorded unchanged, and records the rest.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR

from grace.core.globs import any_glob, excluded_folder, wanted
from grace.core.manifest import SourceConfig
from grace.resources.db.schema import DocumentRow, ObservedFile
from grace.resources.store.held_deletes import Hold
from grace.resources.store.not_read import NO_SUFFIX
from grace.resources.store.store import Store
from grace.resources.text.reading import content_hash, is_marker, is_unread, refused_marker, unread_marker
from grace.sensors.delete_guard import guard

# Dagster abandons a sensor evaluation after 60 s, and a tick should stay well under 10 s: the
# listing (about 2 s for 100,000 files) plus this budget plus one batch.
SCAN_BUDGET_SECONDS = 3.0
RECORD_BATCH = 1000  # files per transaction


def list_files(
    root: Path,
    patterns: Sequence[str],
    under: str = "",
    exclude: Sequence[str] = (),
    unmatched: Counter[str] | None = None,
) -> dict[str, os.stat_result]:
    """Entries below root/under that match the patterns and no exclude glob, by /-separated path
    relative to root, with their lstat. With unmatched, the entries that match no pattern and no
    exclude are counted there by suffix (file_suffix): nothing is left out in silence.

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
            elif excluded(relative):
                continue  # the user's choice, neither listed nor counted
            elif included(relative):
                try:
                    found[relative] = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
            elif unmatched is not None:
                unmatched[file_suffix(entry.name)] += 1
    return found


def file_suffix(name: str) -> str:
    """The suffix a reader is picked by, lower-cased (".PPTX" is ".pptx"), NO_SUFFIX for none (".bashrc"
    has none), printable as it is shown: non-UTF-8 bytes as \\xNN, control characters as \\uNNNN."""
    suffix = stored_path(os.path.splitext(name)[1]).lower()
    if not suffix:
        return NO_SUFFIX
    return "".join(char if char.isprintable() else f"\\u{ord(char):04x}" for char in suffix)


@dataclass
class Dirty:
    """Relative paths touched since the last look: files, and folders to list whole."""

    files: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.files) + len(self.folders)


@dataclass
class ScanResult:
    """What a scan found, or recorded. touched[i] is the file that moved[i] leads to, as it is now."""

    changed: list[ObservedFile] = field(default_factory=list)
    touched: list[ObservedFile] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    finished: bool = True  # False: the time budget ran out, and the next scan takes up the rest
    held: Hold | None = None  # the deletes this scan held back instead (sensors/delete_guard.py)

    @property
    def empty(self) -> bool:
        return not (self.changed or self.touched or self.moved or self.deleted)

    def add(self, other: ScanResult) -> None:
        self.changed += other.changed
        self.touched += other.touched
        self.moved += other.moved
        self.deleted += other.deleted

    def batches(self, size: int) -> Iterator[ScanResult]:
        """Parts of at most size files: moves first, then deletions (both show in search at once), then changes."""
        items = [*zip(self.moved, self.touched), *self.deleted, *self.changed]
        for first in range(0, len(items), size):
            batch = ScanResult()
            for item in items[first : first + size]:
                if isinstance(item, str):
                    batch.deleted.append(item)
                elif isinstance(item, ObservedFile):
                    batch.changed.append(item)
                else:
                    batch.moved.append(item[0])
                    batch.touched.append(item[1])
            yield batch


class HashBudget:
    """Hashing allowed until a deadline, and at least once, so that every scan makes progress."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.used = False
        self.ran_out = False

    def allows(self) -> bool:
        if self.used and time.monotonic() > self.deadline:
            self.ran_out = True
            return False
        self.used = True
        return True


def diff_folder(
    source: SourceConfig,
    known: dict[str, DocumentRow],
    on_disk: dict[str, os.stat_result],
    deadline: float = float("inf"),
) -> ScanResult:
    """What differs between the store's view of a source and the folder, hashing only what must be.

    Equal size and mtime means unchanged, except for a document whose hash is a marker
    (oversize, unreadable, refused): its cause may have been fixed outside the file (chmod,
    max_bytes, a link replaced), so it is hashed again. Any other new or different file is
    changed and unread. A new path is a rename of a vanished document of its size if their
    content is equal, or, for a document never read, their size and mtime. Hashing stops at
    the deadline; the files it left are the next scan's, and so are the vanished documents
    they might be renames of.
    """
    result, budget = ScanResult(), HashBudget(deadline)
    vanished = {path: row for path, row in known.items() if path not in on_disk}
    vanished_by_size: dict[int, dict[str, list[str]]] = {}
    for path, row in sorted(vanished.items()):
        vanished_by_size.setdefault(row.size, {}).setdefault(row.disk_hash, []).append(path)
    sizes_read = {row.size for row in vanished.values() if not is_unread(row.disk_hash)}
    new_paths, marked = [], []
    for path, stat in on_disk.items():  # the hot loop of every full scan: unchanged files cost a comparison
        row = known.get(path)
        if row is None:
            new_paths.append(path)
        elif row.size != stat.st_size or row.mtime_ns != stat.st_mtime_ns:
            result.changed.append(_unread(path, stat))
        elif is_marker(row.disk_hash):
            marked.append(path)
    for path in sorted(marked):
        if not budget.allows():
            break
        digest = content_hash(source.path, path, int(source.max_bytes))
        if digest is not None and digest != known[path].disk_hash:
            stat = on_disk[path]
            result.changed.append(ObservedFile(path, stat.st_size, stat.st_mtime_ns, digest))
    unhashed_sizes: set[int] = set()
    for path in sorted(new_paths):
        stat = on_disk[path]
        observed = _unread(path, stat)
        same_size = vanished_by_size.get(stat.st_size, {})
        if observed.disk_hash not in same_size:
            if stat.st_size not in sizes_read:  # no vanished content to compare with
                result.changed.append(observed)
                continue
            if not budget.allows():
                unhashed_sizes.add(stat.st_size)
                continue
            digest = content_hash(source.path, path, int(source.max_bytes))
            if digest is None:
                continue
            observed = ObservedFile(path, stat.st_size, stat.st_mtime_ns, digest)
        old_paths = same_size.get(observed.disk_hash)
        if not old_paths:
            result.changed.append(observed)
            continue
        old_path = old_paths.pop(0)
        if not old_paths:
            del same_size[observed.disk_hash]
        del vanished[old_path]
        result.moved.append((old_path, path))
        result.touched.append(observed)
    result.changed.sort(key=lambda file: file.path)
    result.deleted = sorted(path for path, row in vanished.items() if row.size not in unhashed_sizes)
    result.finished = not budget.ran_out
    return result


def _unread(path: str, stat: os.stat_result) -> ObservedFile:
    return ObservedFile(path, stat.st_size, stat.st_mtime_ns, unread_marker(stat.st_size, stat.st_mtime_ns))


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


def reconcile(store: Store, source: SourceConfig, shards: int, dirty: Dirty | None = None) -> ScanResult:
    """Bring the store's view of a folder up to date, all of it or only the dirty paths, as far as
    SCAN_BUDGET_SECONDS allow; return what was recorded, unfinished if the budget ran out first.

    Files whose names are not UTF-8 are quarantined under their escaped names and never
    reach the diff, so one bad name cannot stop a source's ticks. A whole-folder scan also
    replaces the source's counts of the files that match no pattern (store.ledger.not_read).
    """
    if dirty is None:
        known = store.ledger.documents_of(source.name)
        unmatched: Counter[str] = Counter()
        on_disk = list_files(source.path, source.patterns, exclude=source.exclude, unmatched=unmatched)
        store.ledger.record_not_read(source.name, unmatched)  # only a full scan sees every unmatched file
    else:
        paths = {stored_path(relative) for relative in dirty.files}
        known, on_disk = store.ledger.documents_at(source.name, paths), {}
        real_root = os.path.realpath(source.path)
        for relative in dirty.files:
            stat = stat_entry(real_root, source.path, relative) if wanted(relative, source) else None
            if stat is not None:
                on_disk[relative] = stat
        for folder in dirty.folders:
            known.update(store.ledger.documents_under(source.name, stored_path(folder)))
            on_disk.update(list_files(source.path, source.patterns, under=folder, exclude=source.exclude))
    deadline = time.monotonic() + SCAN_BUDGET_SECONDS
    found_none = dirty is None and not on_disk
    active = {path for path, row in known.items() if row.status == "active"}
    documents = len(active) if dirty is None else store.ledger.active_count(source.name)
    badly_named = {stored_path(relative): on_disk.pop(relative) for relative in list(on_disk) if not is_utf8(relative)}
    unrecorded = {path: stat for path, stat in badly_named.items() if known.pop(path, None) is None}
    names_finished = quarantine_bad_names(store, source.name, unrecorded, shards, deadline)
    found = diff_folder(source, known, on_disk, deadline)
    found.deleted, found.held = guard(store, source, found.deleted, active, documents, dirty is None, found_none)
    recorded = ScanResult(finished=found.finished and names_finished, held=found.held)
    for batch in found.batches(RECORD_BATCH):
        if not recorded.empty and time.monotonic() > deadline:
            recorded.finished = False
            break
        store.ledger.record_scan(source.name, batch.changed, batch.touched, batch.moved, batch.deleted, shards)
        recorded.add(batch)
    return recorded


def quarantine_bad_names(
    store: Store, source: str, badly_named: dict[str, os.stat_result], shards: int, deadline: float
) -> bool:
    """Record files whose names are not UTF-8 as quarantined documents, under their escaped names,
    a batch at a time until the deadline; return whether all of them were.

    They need no run: nothing of them is read until they are renamed (a new path, a new document).
    """
    if not badly_named:
        return True
    ordered = sorted(badly_named.items())
    for first in range(0, len(ordered), RECORD_BATCH):
        if first and time.monotonic() > deadline:
            return False
        batch = ordered[first : first + RECORD_BATCH]
        store.ledger.record_quarantined(source, [_refused_name(path, stat) for path, stat in batch], shards)
    return True


def _refused_name(path: str, stat: os.stat_result) -> tuple[ObservedFile, str]:
    marker = refused_marker("name", stat.st_size, stat.st_mtime_ns)
    reason = f"file name is not valid UTF-8: {path}; rename it"
    return ObservedFile(path, stat.st_size, stat.st_mtime_ns, marker), reason

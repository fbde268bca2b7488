"""Compare a watched folder with the store and record what changed, hashing only what must be."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from stat import S_ISREG

from grace.core.manifest import SourceConfig
from grace.resources.reading import content_hash
from grace.resources.schema import DocumentRow, ObservedFile
from grace.resources.store import Store


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob over /-separated relative paths: ** spans folders, * and ? do not."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(relative_path: str, patterns: list[str]) -> bool:
    return any(glob_regex(pattern).match(relative_path) for pattern in patterns)


def list_files(root: Path, patterns: list[str], under: str = "") -> dict[str, os.stat_result]:
    """Regular files below root/under that match the patterns, by /-separated path relative to root.

    Symlinks are not followed: a watched folder never reaches outside itself.
    """
    found: dict[str, os.stat_result] = {}
    stack = [root / under]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                relative = Path(entry.path).relative_to(root).as_posix()
                if matches(relative, patterns):
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

    Size and mtime unchanged means unchanged; otherwise the content hash decides. A new
    path whose content equals a vanished document's is a rename, not a new document.
    """
    result = ScanResult()
    vanished = {path: row for path, row in known.items() if path not in on_disk}
    vanished_by_hash = {row.disk_hash: path for path, row in vanished.items()}
    for path, stat in sorted(on_disk.items()):
        row = known.get(path)
        if row is not None and row.size == stat.st_size and row.mtime_ns == stat.st_mtime_ns:
            continue
        digest = content_hash(source.path / path, stat.st_size, stat.st_mtime_ns, int(source.max_bytes))
        if digest is None:
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


def stat_file(path: Path) -> os.stat_result | None:
    """lstat of a regular file that is not a symlink, else None."""
    try:
        stat = path.lstat()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return stat if S_ISREG(stat.st_mode) else None


def reconcile(store: Store, source: SourceConfig, dirty: Dirty | None = None) -> ScanResult:
    """Bring the store's view of a folder up to date: all of it, or only the dirty paths."""
    if dirty is None:
        known, on_disk = store.documents_of(source.name), list_files(source.path, source.patterns)
    else:
        known, on_disk = store.documents_at(source.name, dirty.files), {}
        for relative in dirty.files:
            stat = stat_file(source.path / relative)
            if stat is not None:
                on_disk[relative] = stat
        for folder in dirty.folders:
            known.update(store.documents_under(source.name, folder))
            on_disk.update(list_files(source.path, source.patterns, under=folder))
    result = diff_folder(source, known, on_disk)
    if not result.empty:
        store.record_scan(source.name, result.changed, result.touched, result.moved, result.deleted)
    return result

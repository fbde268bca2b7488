"""Read a user's file safely, or say exactly why it cannot be. Files are never modified.

Every open goes through one safe path: no link is followed out of the watched folder, no
FIFO or device is waited on, and no read goes past the source's max_bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

BLOCK_BYTES = 1 << 20
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# A document hash of one of these forms stands for a file that was not hashed: its cause may be
# fixed outside the file (chmod, max_bytes, a link replaced), so scans look at it again.
MARKER_PREFIXES = ("oversize:", "unreadable:", "refused:")
# The hash of a file the sensor saw appear or change but did not read: the ingest run hashes it.
UNREAD_PREFIX = "unread:"


class Refused(Exception):
    """The file at a path cannot be ingested as it is; marker stands in for its content hash."""

    def __init__(self, marker: str, problem: str):
        super().__init__(problem)
        self.marker = marker
        self.problem = problem


def oversize_marker(size: int, mtime_ns: int) -> str:
    """Stands in for the hash of a file too large to read: any size or mtime change shows."""
    return f"oversize:{size}:{mtime_ns}"


def unreadable_marker(error: OSError, size: int, mtime_ns: int) -> str:
    return f"unreadable:{error.errno}:{size}:{mtime_ns}"


def refused_marker(kind: str, size: int, mtime_ns: int) -> str:
    return f"refused:{kind}:{size}:{mtime_ns}"


def is_marker(disk_hash: str) -> bool:
    """True for a hash that stands for a file Grace could not or would not read."""
    return disk_hash.startswith(MARKER_PREFIXES)


def unread_marker(size: int, mtime_ns: int) -> str:
    """Stands in for the hash of a file not read yet; differs from every processed hash, so it is pending."""
    return f"{UNREAD_PREFIX}{size}:{mtime_ns}"


def is_unread(disk_hash: str) -> bool:
    return disk_hash.startswith(UNREAD_PREFIX)


def _oversize(size: int, mtime_ns: int, max_bytes: int) -> Refused:
    return Refused(
        oversize_marker(size, mtime_ns),
        f"{size} bytes is over the source's max_bytes ({max_bytes}); raise max_bytes in grace.yaml or split the file",
    )


def _special_kind(mode: int) -> tuple[str, str] | None:
    """(marker kind, problem) for anything that is not a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "symlink", "is a symlink; Grace never follows links out of a watched folder"
    if stat.S_ISDIR(mode):
        return "directory", "is a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "fifo", "is a FIFO/special file; only regular files are ingested"
    return "special", "is a socket or device (special file); only regular files are ingested"


def open_inside(root: Path, relative: str) -> tuple[int, os.stat_result] | None:
    """Open root/relative for reading, refusing anything but a regular file inside root.

    Returns (descriptor, fstat) for the caller to close, None if the file is gone, or raises
    Refused. An lstat first keeps FIFOs and devices from being opened at all (opening a FIFO
    would wake its writer); the flags and the fstat of the descriptor close the race after it.
    O_NOFOLLOW guards only the last component, so the descriptor's real path is checked too:
    a parent folder swapped for a link must not lead out of the root.
    """
    path = os.path.join(root, relative)
    try:
        _refuse_special(os.lstat(path))
        descriptor = os.open(path, OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise _refusal_of_failed_open(path, error) from None
    try:
        opened = os.fstat(descriptor)
        _refuse_special(opened)
        real_path = _real_path(descriptor, path)
        if not _inside(root, path, real_path):
            raise Refused(
                refused_marker("outside", opened.st_size, opened.st_mtime_ns),
                f"resolves outside the watched folder (to {real_path}); a folder on its path is a link, "
                "and Grace never follows links out of a watched folder",
            )
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor, opened


def _inside(root: Path, path: str, real_path: str) -> bool:
    """Whether an opened file's real path lies inside root.

    A real path holds no link; so if it is the path that was opened, textually inside root, no
    folder on the way is a link, root included, and root's own realpath (an lstat per folder of
    it, for every file read) is not needed.
    """
    if real_path == os.path.abspath(path) and real_path.startswith(os.path.join(os.path.abspath(root), "")):
        return True
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, real_path]) == real_root


def _refuse_special(seen: os.stat_result) -> None:
    special = _special_kind(seen.st_mode)
    if special is not None:
        raise Refused(refused_marker(special[0], seen.st_size, seen.st_mtime_ns), special[1])


def _real_path(descriptor: int, path: str) -> str:
    """Where an open descriptor really points; without /proc (not Linux) the path's realpath,
    which a swap between the open and this call could still fool."""
    try:
        return os.readlink(f"/proc/self/fd/{descriptor}")
    except FileNotFoundError:
        return os.path.realpath(path)


def _refusal_of_failed_open(path: str, error: OSError) -> Refused:
    if error.errno == errno.ELOOP:  # swapped for a link since the lstat
        return Refused(refused_marker("symlink", 0, 0), _special_kind(stat.S_IFLNK)[1])
    try:
        seen = os.lstat(path)
        size, mtime_ns = seen.st_size, seen.st_mtime_ns
    except OSError:
        size, mtime_ns = 0, 0
    problem = f"cannot be read ({error.strerror}); check its permissions"
    return Refused(unreadable_marker(error, size, mtime_ns), problem)


def _capped_blocks(descriptor: int, opened: os.stat_result, max_bytes: int) -> Iterator[bytes]:
    """The file's bytes, block by block; Refused as oversize past max_bytes, even if it grew while read."""
    if opened.st_size > max_bytes:
        raise _oversize(opened.st_size, opened.st_mtime_ns, max_bytes)
    total = 0
    while True:
        try:
            block = os.read(descriptor, min(BLOCK_BYTES, max_bytes + 1 - total))
        except OSError as error:
            raise Refused(
                unreadable_marker(error, opened.st_size, opened.st_mtime_ns),
                f"cannot be read ({error.strerror}); check the file and its disk",
            ) from None
        if not block:
            return
        total += len(block)
        if total > max_bytes:
            grown = os.fstat(descriptor)
            raise _oversize(max(grown.st_size, total), grown.st_mtime_ns, max_bytes)
        yield block


def _digest_or_data(root: Path, relative: str, max_bytes: int, keep_data: bool) -> tuple[str, bytes | None] | None:
    """(sha256, the bytes if asked for) of a file read safely; None if it is gone; raises Refused."""
    opened = open_inside(root, relative)
    if opened is None:
        return None
    descriptor, status = opened
    digest, kept = hashlib.sha256(), []
    try:
        for block in _capped_blocks(descriptor, status, max_bytes):
            digest.update(block)
            if keep_data:
                kept.append(block)
    finally:
        os.close(descriptor)
    return digest.hexdigest(), b"".join(kept) if keep_data else None


def content_hash(root: Path, relative: str, max_bytes: int) -> str | None:
    """sha256 of root/relative as read_document would read it; a marker if it cannot be; None if gone."""
    try:
        hashed = _digest_or_data(root, relative, max_bytes, keep_data=False)
    except Refused as refused:
        return refused.marker
    return None if hashed is None else hashed[0]


def read_bytes(root: Path, relative: str, max_bytes: int) -> tuple[str, bytes] | None:
    """(sha256, bytes) of root/relative, read safely within max_bytes; None if it is gone; raises Refused."""
    read = _digest_or_data(root, relative, max_bytes, keep_data=True)
    return None if read is None else (read[0], read[1] or b"")

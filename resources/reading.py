"""Read a user's file into text, or say exactly why it cannot be ingested. Files are never modified."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReadResult:
    content_hash: str
    text: str | None = None
    problem: str | None = None  # set when the file must be quarantined


def oversize_marker(size: int, mtime_ns: int) -> str:
    """Stands in for the hash of a file too large to read: any size or mtime change shows."""
    return f"oversize:{size}:{mtime_ns}"


def unreadable_marker(error: OSError, size: int, mtime_ns: int) -> str:
    return f"unreadable:{error.errno}:{size}:{mtime_ns}"


def content_hash(path: Path, size: int, mtime_ns: int, max_bytes: int) -> str | None:
    """sha256 of the file, streamed; a marker if it is too large or unreadable; None if gone."""
    if size > max_bytes:
        return oversize_marker(size, mtime_ns)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    except OSError as error:
        return unreadable_marker(error, size, mtime_ns)
    return digest.hexdigest()


def read_document(path: Path, max_bytes: int) -> ReadResult | None:
    """Read and decode a file; None if it no longer exists."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    if stat.st_size > max_bytes:
        return ReadResult(
            oversize_marker(stat.st_size, stat.st_mtime_ns),
            problem=f"{stat.st_size} bytes is over the source's max_bytes ({max_bytes}); "
            "raise max_bytes in grace.yaml or split the file",
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        return ReadResult(
            unreadable_marker(error, stat.st_size, stat.st_mtime_ns),
            problem=f"cannot be read ({error.strerror}); check its permissions",
        )
    return ReadResult(hashlib.sha256(data).hexdigest(), *_decode(data))


def _decode(data: bytes) -> tuple[str | None, str | None]:
    if not data:
        return None, "empty file; add text to it"
    nul = data.find(b"\0")
    if nul >= 0:
        return None, f"binary content (NUL byte at offset {nul}); only UTF-8 text is ingested"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return None, (
            f"not UTF-8: byte 0x{data[error.start]:02x} at offset {error.start} is invalid; re-save the file as UTF-8"
        )
    if not text.strip():
        return None, "contains only whitespace; add text to it"
    return text, None

"""From a file in a watched folder to its text, by the reader its suffix names, or the reason it
must be quarantined.

The bytes are read once, safely and within max_bytes (reading.py); readers of untrusted binary
formats then run in the worker process (isolation.py), the pure-Python ones in process.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from grace.core.manifest import SourceConfig
from grace.resources.text.isolation import DEFAULT_SECONDS_PER_FILE, ReaderPool, ReaderWorker, Tag
from grace.resources.text.readers.base import ExtractedDocument, Reader, ReadLimits, Unreadable
from grace.resources.text.readers.registry import READ_SUFFIXES, READERS, reader_for
from grace.resources.text.reading import Refused, read_bytes

DEFAULT_MAX_PAGES = 5000


@dataclass(frozen=True)
class ReadResult:
    content_hash: str
    stamp: str  # the reader and the settings it read with: a change of either reads the file again
    problem: str | None = None  # set when the file must be quarantined
    document: ExtractedDocument | None = None

    @property
    def text(self) -> str | None:
        return None if self.document is None else self.document.text


@dataclass(frozen=True)
class FileToRead:
    """A file of a source and the source's reading settings."""

    root: Path
    relative: str
    max_bytes: int
    max_pages: int = DEFAULT_MAX_PAGES
    read_seconds: float = DEFAULT_SECONDS_PER_FILE


def read_document(
    root: Path,
    relative: str,
    max_bytes: int,
    *,
    max_pages: int = DEFAULT_MAX_PAGES,
    read_seconds: float = DEFAULT_SECONDS_PER_FILE,
    worker: ReaderWorker | None = None,
) -> ReadResult | None:
    """Read root/relative into text; None if it no longer exists.

    Isolated readers run in worker, which the caller keeps for a run's files; without one, a
    worker is started for this file alone.
    """
    return read_file(FileToRead(root, relative, max_bytes, max_pages, read_seconds), worker)


def read_file(file: FileToRead, worker: ReaderWorker | None = None) -> ReadResult | None:
    """read_document for a FileToRead."""
    prepared = _prepare(file)
    if not isinstance(prepared, _ToParse):
        return prepared
    if worker is not None:
        return prepared.parsed_by(worker)
    with ReaderWorker() as own_worker:
        return prepared.parsed_by(own_worker)


def read_documents(
    pool: ReaderPool, files: Iterable[tuple[Tag, FileToRead]]
) -> Iterator[tuple[Tag, ReadResult | None]]:
    """read_document for each file, with the pool's workers parsing side by side while the caller
    stores what has landed: results come in the order they are ready, each with its tag. At most
    the pool's size of files are held at a time."""
    for tag, file in files:
        prepared = _prepare(file)
        if not isinstance(prepared, _ToParse):
            yield tag, prepared
            continue
        if pool.full:
            yield _landed(*pool.landed())
        pool.submit(
            (tag, prepared.digest, prepared.stamp), prepared.data, prepared.name, prepared.limits, prepared.seconds
        )
    while pool.in_flight:
        yield _landed(*pool.landed())


def _landed(handed: tuple[Tag, str, str], outcome: ExtractedDocument | Unreadable) -> tuple[Tag, ReadResult]:
    tag, digest, stamp = handed
    if isinstance(outcome, Unreadable):
        return tag, ReadResult(digest, stamp, problem=str(outcome))
    return tag, ReadResult(digest, stamp, document=outcome)


@dataclass(frozen=True)
class _ToParse:
    """A file's bytes, for a reader that runs isolated."""

    digest: str
    stamp: str
    data: bytes
    name: str
    limits: ReadLimits
    seconds: float

    def parsed_by(self, worker: ReaderWorker) -> ReadResult:
        try:
            return ReadResult(
                self.digest, self.stamp, document=worker.extract(self.data, self.name, self.limits, self.seconds)
            )
        except Unreadable as error:
            return ReadResult(self.digest, self.stamp, problem=str(error))


def _prepare(file: FileToRead) -> ReadResult | None | _ToParse:
    """What can be known of file without an isolated reader: its result, or the bytes to parse."""
    name = os.path.basename(file.relative)
    reader = reader_for(name)
    stamp = _stamp(reader, file.max_bytes, file.max_pages, file.read_seconds)
    try:
        read = read_bytes(file.root, file.relative, file.max_bytes)
    except Refused as refused:
        return ReadResult(refused.marker, stamp, problem=refused.problem)
    if read is None:
        return None
    digest, data = read
    if reader is None:
        suffix = os.path.splitext(name)[1] or "(no suffix)"
        return ReadResult(
            digest,
            stamp,
            problem=f"no reader for {suffix} files; Grace reads {', '.join(READ_SUFFIXES)}: "
            "narrow sources[].patterns in grace.yaml to those",
        )
    if not data:
        return ReadResult(digest, stamp, problem="empty file; add text to it")
    limits = ReadLimits(max_text_chars=file.max_bytes, max_pages=file.max_pages)
    if reader.isolated:
        return _ToParse(digest, stamp, data, name, limits, file.read_seconds)
    try:
        return ReadResult(digest, stamp, document=reader.read(data, name, limits))
    except Unreadable as error:
        return ReadResult(digest, stamp, problem=str(error))


def source_stamps(source: SourceConfig) -> frozenset[str]:
    """Every stamp a file of this source can be read with today: a document stamped otherwise is read again."""
    settings = (int(source.max_bytes), source.max_pages, source.read_seconds)
    return frozenset(_stamp(reader, *settings) for reader in (*READERS, None))


def _stamp(reader: Reader | None, max_bytes: int, max_pages: int, read_seconds: float) -> str:
    """The reader's name and version, and only the settings it depends on: a change of max_pages
    reads PDFs again, not text files."""
    if reader is None:  # a file no reader takes: read again once a Grace has a reader for it
        readers = hashlib.sha256(",".join(READ_SUFFIXES).encode()).hexdigest()[:12]
        return f"none;readers={readers}"
    parts = [f"{type(reader).__name__}/{reader.version}", f"bytes={max_bytes}"]
    if reader.isolated:
        parts.append(f"seconds={read_seconds:g}")
    if reader.paged:
        parts.append(f"pages={max_pages}")
    return ";".join(parts)

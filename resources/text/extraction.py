"""From a file in a watched folder to its text, by the reader its suffix names, or the reason it
must be quarantined.

The bytes are read once, safely and within max_bytes (reading.py); readers of untrusted binary
formats then run in the worker process (isolation.py), the pure-Python ones in process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from grace.core.manifest import SourceConfig
from grace.resources.text.isolation import DEFAULT_SECONDS_PER_FILE, ReaderWorker
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
    name = os.path.basename(relative)
    reader = reader_for(name)
    stamp = _stamp(reader, max_bytes, max_pages, read_seconds)
    try:
        read = read_bytes(root, relative, max_bytes)
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
    limits = ReadLimits(max_text_chars=max_bytes, max_pages=max_pages)
    try:
        if not reader.isolated:
            document = reader.read(data, name, limits)
        elif worker is not None:
            document = worker.extract(data, name, limits, read_seconds)
        else:
            with ReaderWorker() as own_worker:
                document = own_worker.extract(data, name, limits, read_seconds)
    except Unreadable as error:
        return ReadResult(digest, stamp, problem=str(error))
    return ReadResult(digest, stamp, document=document)


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

"""Every reader, found by the suffix of a file's name. A new format is one Reader subclass and one
line in READERS."""

from __future__ import annotations

import os

from grace.resources.text.readers.base import Reader
from grace.resources.text.readers.docx import DocxReader
from grace.resources.text.readers.html import HtmlReader
from grace.resources.text.readers.markdown import MarkdownReader
from grace.resources.text.readers.pdf import PdfReader
from grace.resources.text.readers.plain import PlainTextReader

READERS: tuple[Reader, ...] = (
    PlainTextReader(),
    MarkdownReader(),
    PdfReader(),
    DocxReader(),
    HtmlReader(),
)


def _by_suffix(readers: tuple[Reader, ...]) -> dict[str, Reader]:
    found: dict[str, Reader] = {}
    for reader in readers:
        for suffix in reader.suffixes:
            if suffix.lower() in found:
                raise ValueError(f"two readers for {suffix}: {found[suffix.lower()]!r} and {reader!r}")
            found[suffix.lower()] = reader
    return found


BY_SUFFIX: dict[str, Reader] = _by_suffix(READERS)
READ_SUFFIXES: tuple[str, ...] = tuple(sorted(BY_SUFFIX))
# Readers of C parsers or zip archives: they run in the worker process, never in the caller.
ISOLATED_SUFFIXES: frozenset[str] = frozenset(suffix for suffix, reader in BY_SUFFIX.items() if reader.isolated)


def reader_for(name: str) -> Reader | None:
    """The reader for a file name's suffix, in any case; None for a format Grace does not read."""
    return BY_SUFFIX.get(os.path.splitext(name)[1].lower())

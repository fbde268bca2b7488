"""What a reader gives back, and how it says a file cannot be read.

A reader turns a file's bytes into a title and sections: runs of text under one heading path,
with the pages they came from (PDF). It never touches the file system: the bytes were read
already, safely and within max_bytes, by resources.text.reading.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

HEADING_SEPARATOR = " > "


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on what one file may give: the extracted text is capped like the file itself."""

    max_text_chars: int
    max_pages: int


@dataclass(frozen=True)
class TextSection:
    """Text under one heading path; pages are 1-based and set only by paged formats (PDF)."""

    text: str
    heading: tuple[str, ...] = ()
    first_page: int | None = None
    last_page: int | None = None

    @property
    def heading_path(self) -> str:
        return HEADING_SEPARATOR.join(self.heading)


@dataclass(frozen=True)
class ExtractedDocument:
    title: str
    sections: list[TextSection] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The whole document as one text, sections a blank line apart, each under its heading, so a
        heading's words stay searchable."""
        return "\n\n".join(under_heading(section) for section in self.sections)


def under_heading(section: TextSection) -> str:
    """The section's text, opened by the last part of its heading unless it starts with it already."""
    if not section.heading or section.text.startswith(section.heading[-1]):
        return section.text
    return f"{section.heading[-1]}\n\n{section.text}"


class Unreadable(Exception):
    """The file cannot be read as its suffix says; the message is the quarantine reason, and says
    what the user can do about it."""


class Reader(ABC):
    """One format. Subclasses set suffixes and version, and implement sections().

    version is part of every document's stamp: raise it when the reader's output changes, and
    the files it read are extracted again.
    """

    suffixes: tuple[str, ...] = ()
    version: str = "1"
    # True for readers of C parsers or zip expansion: they run in the worker process (isolation.py).
    isolated: bool = False
    paged: bool = False  # True if max_pages bounds it
    no_text_reason: str = "has no text; add text to it"

    def read(self, data: bytes, name: str, limits: ReadLimits) -> ExtractedDocument:
        """The title and the non-empty sections of a file; Unreadable if there is no text in it."""
        title, sections = self.sections(data, name, limits)
        kept, chars = [], 0
        for section in sections:
            text = section.text.strip()
            if not text:
                continue
            chars += len(text)
            if chars > limits.max_text_chars:
                raise Unreadable(
                    f"its text is over {limits.max_text_chars} characters (the source's max_bytes); "
                    "raise max_bytes in grace.yaml or split the file"
                )
            kept.append(TextSection(text, section.heading, section.first_page, section.last_page))
        if not kept:
            raise Unreadable(self.no_text_reason)
        return ExtractedDocument(title.strip() or name, kept)

    @abstractmethod
    def sections(self, data: bytes, name: str, limits: ReadLimits) -> tuple[str, Iterator[TextSection]]:
        """(title, sections in reading order); raise Unreadable with a reason the user can act on."""

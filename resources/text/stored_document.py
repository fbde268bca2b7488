"""A read document as the store keeps it until it is chunked: one string, sealed as a whole, that
gives back the title and the sections (heading path, pages) the chunks step cuts along.

Text stored by a Grace older than the readers is plain text: it comes back as one section.
"""

from __future__ import annotations

import json

from grace.resources.text.readers.base import ExtractedDocument, TextSection

# Readers refuse text with NUL bytes, so no plain text stored by an older Grace starts with this.
MARKER = "\x00grace-document/1\n"


def to_stored(document: ExtractedDocument) -> str:
    sections = [[s.text, list(s.heading), s.first_page, s.last_page] for s in document.sections]
    return MARKER + json.dumps({"title": document.title, "sections": sections}, ensure_ascii=False)


def from_stored(stored: str) -> ExtractedDocument:
    if not stored.startswith(MARKER):
        return ExtractedDocument("", [TextSection(stored)])
    parsed = json.loads(stored[len(MARKER) :])
    return ExtractedDocument(
        parsed["title"],
        [TextSection(text, tuple(heading), first, last) for text, heading, first, last in parsed["sections"]],
    )

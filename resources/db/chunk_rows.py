"""A chunk as the chunks step writes it, and as search reads it back.

Where a chunk sits in its document (the title, the heading path) is document text: it travels as
one JSON context, sealed like the chunk's text. Pages are positions, not text, and stay plain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class NewChunk:
    ordinal: int
    chunk_hash: str
    text: str
    token_count: int
    context: str | None = None  # chunk_context(title, heading); sealed with the text
    first_page: int | None = None
    last_page: int | None = None


@dataclass(frozen=True)
class ChunkHit:
    chunk_id: int
    document_id: str
    source: str
    path: str
    ordinal: int
    text: str
    title: str = ""
    heading: tuple[str, ...] = ()
    first_page: int | None = None
    last_page: int | None = None


def chunk_context(title: str, heading: tuple[str, ...]) -> str:
    return json.dumps({"title": title, "heading": list(heading)}, ensure_ascii=False, separators=(",", ":"))


def parse_context(context: str | None) -> tuple[str, tuple[str, ...]]:
    """(title, heading) of a chunk's opened context; empty for a chunk cut before chunks had one."""
    if context is None:
        return "", ()
    parsed = json.loads(context)
    return str(parsed.get("title", "")), tuple(str(part) for part in parsed.get("heading", ()))

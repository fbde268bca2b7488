"""Markdown: one section per heading, its text the source lines under it, so code blocks, lists
and tables reach the chunker as the author wrote them."""

from __future__ import annotations

from collections.abc import Iterator

from markdown_it import MarkdownIt
from markdown_it.token import Token

from grace.resources.text.readers.base import Reader, ReadLimits, TextSection
from grace.resources.text.readers.plain import decode_text

# Inline tokens whose content is text a reader sees; markup (emphasis, links) adds none.
TEXT_TOKENS = frozenset({"text", "code_inline", "html_inline"})


class MarkdownReader(Reader):
    suffixes = (".md", ".markdown")
    version = "1"
    no_text_reason = "has headings but no text under them; add text to it"

    def sections(self, data: bytes, name: str, limits: ReadLimits) -> tuple[str, Iterator[TextSection]]:
        source = decode_text(data).replace("\r\n", "\n").replace("\r", "\n")
        lines = source.split("\n")
        headings = list(_headings(MarkdownIt("commonmark").parse(source)))
        title = next((text for level, text, _lines in headings if level == 1), name)
        return title, _sections(lines, headings)


def _headings(tokens: list[Token]) -> Iterator[tuple[int, str, tuple[int, int]]]:
    """(level, plain text, source line range) of each top-level heading: one inside a quote or a
    list item belongs to that block, not to the document's outline."""
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.level == 0 and token.map is not None:
            inline = tokens[index + 1]
            text = "".join(child.content for child in inline.children or () if child.type in TEXT_TOKENS)
            yield int(token.tag[1:]), " ".join(text.split()), (token.map[0], token.map[1])


def _sections(lines: list[str], headings: list[tuple[int, str, tuple[int, int]]]) -> Iterator[TextSection]:
    first = headings[0][2][0] if headings else len(lines)
    yield TextSection("\n".join(lines[:first]))
    path: list[tuple[int, str]] = []
    for index, (level, text, (_start, end)) in enumerate(headings):
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, text))
        stop = headings[index + 1][2][0] if index + 1 < len(headings) else len(lines)
        yield TextSection("\n".join(lines[end:stop]), tuple(heading for _level, heading in path))

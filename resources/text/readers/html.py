"""HTML, by selectolax (Lexbor): the page's main content without scripts, styles and navigation,
one section per heading, one line per block."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from typing import Any

from grace.resources.text.readers.base import Reader, ReadLimits, TextSection
from grace.resources.text.readers.plain import bom_codec

# Content no reader of the page reads as its text: code, page furniture, forms.
DROPPED_TAGS = ("script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form")
# Navigation bars of generated manuals, by class: Texinfo (header, nav-panel) and DocBook (navheader, navfooter).
DROPPED_SELECTOR = '[role="navigation"], div.header, div.nav-panel, div.navheader, div.navfooter'
HEADINGS = {f"h{level}": level for level in range(1, 7)}
# Elements that start a line of their own; everything else (a, b, span, code...) flows inside one.
BLOCKS = frozenset(
    {
        "address", "article", "blockquote", "body", "caption", "dd", "details", "dialog", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "hr", "li", "main", "ol", "p", "pre", "section", "summary", "table",
        "tbody", "thead", "tfoot", "tr", "ul", "br",
    }
)  # fmt: skip
CELLS = frozenset({"td", "th"})
META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
# Browsers look for the charset declaration within the first 1024 bytes; a little slack for long heads.
CHARSET_SCAN_BYTES = 4096


class HtmlReader(Reader):
    suffixes = (".html", ".htm")
    version = "2"  # 2: Texinfo and DocBook navigation bars dropped
    isolated = True
    no_text_reason = "HTML with no text (after scripts, styles and navigation are dropped)"

    def sections(self, data: bytes, name: str, limits: ReadLimits) -> tuple[str, Iterator[TextSection]]:
        # Imported here: the Dagster code location loads this module without selectolax; it runs in the worker.
        from selectolax.lexbor import LexborHTMLParser

        tree = LexborHTMLParser(decode_html(data))
        title_node = tree.css_first("title")
        title = _collapsed(title_node.text()) if title_node is not None else ""
        tree.strip_tags(list(DROPPED_TAGS))
        for node in tree.css(DROPPED_SELECTOR):
            node.decompose()
        main = tree.css_first("main") or tree.css_first("article") or tree.body
        if main is None:
            return title or name, iter(())
        if not title:
            first_heading = main.css_first("h1")
            title = _collapsed(first_heading.text()) if first_heading is not None else ""
        return title or name, _sections(main)


def decode_html(data: bytes) -> str:
    """The page's text: by its byte order mark, else UTF-8, else its declared charset, else Latin-1.

    Pages in the wild are often not UTF-8 and declare a legacy charset (or none); Latin-1 maps every
    byte, so an undeclared legacy page still reads, with at worst a few wrong accented letters.
    """
    marked = bom_codec(data)
    if marked is not None:
        return data[marked[1] :].decode(marked[0], errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    declared = META_CHARSET.search(data[:CHARSET_SCAN_BYTES])
    if declared is not None:
        try:
            return data.decode(codecs.lookup(declared.group(1).decode("ascii")).name, errors="replace")
        except LookupError:
            pass  # an unknown charset name: fall through to Latin-1
    return data.decode("latin-1")


def _sections(main: Any) -> Iterator[TextSection]:
    """Walk main in document order: a heading closes the section before it, a block ends a line.

    The walk keeps its own stack, not Python's, so a page nested thousands of levels deep reads.
    """
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    line: list[str] = []
    # A cell's separator is written with its first text, so an empty cell (an image, a spacer) adds none.
    separator_due = False

    def end_line() -> None:
        nonlocal separator_due
        text = _collapsed("".join(line))
        if text:
            lines.append(text)
        line.clear()
        separator_due = False

    stack: list[tuple[Any, bool]] = [(main, False)]
    while stack:
        node, leaving = stack.pop()
        tag = node.tag
        if leaving:
            if tag in BLOCKS:
                end_line()
            continue
        if tag == "-text":
            text = node.text(deep=False)
            if separator_due and text.strip():
                line.append(" | ")
                separator_due = False
            line.append(text)
        elif tag in HEADINGS:
            end_line()
            yield TextSection("\n".join(lines), tuple(heading for _level, heading in path))
            lines.clear()
            level = HEADINGS[tag]
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, _collapsed(node.text())))
        elif tag == "pre":
            end_line()  # preformatted text keeps its lines: it is code or a listing
            lines.extend(text.rstrip() for text in node.text().strip("\n").split("\n"))
        elif not tag.startswith("-"):  # comments and doctypes hold no text
            if tag in BLOCKS:
                end_line()
            elif tag in CELLS and _collapsed("".join(line)):
                separator_due = True
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(list(node.iter(include_text=True))))
    end_line()
    yield TextSection("\n".join(lines), tuple(heading for _level, heading in path))


def _collapsed(text: str) -> str:
    return " ".join(text.split())

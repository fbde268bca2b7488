"""Word (.docx), by python-docx: paragraphs and tables in document order, one section per heading."""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

from grace.resources.text.readers.base import Reader, ReadLimits, TextSection, Unreadable

# A .docx is deflated XML, about 5 to 20 times smaller than its text; an archive far past these
# bounds is built to exhaust the memory of whoever expands it.
MAX_UNCOMPRESSED_BYTES = 200_000_000
MAX_MEMBER_RATIO = 100
RATIO_CHECKED_FROM_BYTES = 5_000_000
# What python-docx raises for a damaged archive, a missing part (KeyError) or a part of the wrong
# type (ValueError); SyntaxError covers lxml's XMLSyntaxError, a part that is not well-formed XML.
DAMAGED_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, SyntaxError)
HEADING_PREFIX = "Heading "
LIST_PREFIX = "List"


class DocxReader(Reader):
    suffixes = (".docx",)
    version = "1"
    isolated = True
    no_text_reason = "is a Word file with no text (blank, or only images)"

    def sections(self, data: bytes, name: str, limits: ReadLimits) -> tuple[str, Iterator[TextSection]]:
        # Imported here: the Dagster code location loads this module without python-docx; it runs in the worker.
        import docx
        from docx.opc.exceptions import PackageNotFoundError

        _refuse_non_zip_or_bomb(data)
        try:
            document = docx.Document(io.BytesIO(data))
            blocks = list(_blocks(document))
            properties_title = _properties_title(document)
        except (*DAMAGED_ERRORS, PackageNotFoundError) as error:
            raise _damaged(f"{type(error).__name__}: {error}") from None
        title = next((text for kind, _level, text in blocks if kind == "title"), "") or properties_title
        return title or name, _sections(blocks)


def _refuse_non_zip_or_bomb(data: bytes) -> None:
    """Unreadable unless data is a zip archive whose declared sizes are safe to expand."""
    stream = io.BytesIO(data)
    if not zipfile.is_zipfile(stream):
        if data.startswith(b"PK\x03\x04"):
            raise _damaged("the zip archive is cut short: its directory is missing")
        raise Unreadable("is not a Word file: a .docx is a zip archive and this is not one")
    try:
        with zipfile.ZipFile(stream) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        raise _damaged(str(error)) from None
    total = sum(member.file_size for member in members)
    lopsided = any(
        member.file_size > RATIO_CHECKED_FROM_BYTES
        and member.file_size > MAX_MEMBER_RATIO * max(member.compress_size, 1)
        for member in members
    )
    if total > MAX_UNCOMPRESSED_BYTES or lopsided:
        raise Unreadable(
            f"looks like a zip bomb: {total / 1e6:.0f} MB uncompressed from {len(data) / 1e3:.0f} KB; "
            "Grace does not expand it"
        )


def _properties_title(document: Any) -> str:
    """The title in the file's core properties; python-docx makes up "Word Document" for a file without them."""
    from docx.opc.constants import RELATIONSHIP_TYPE

    try:
        part = document.part.package.part_related_by(RELATIONSHIP_TYPE.CORE_PROPERTIES)
    except KeyError:
        return ""
    return part.core_properties.title or ""


def _damaged(reason: str) -> Unreadable:
    return Unreadable(f"is not a readable Word file ({reason}); the file may be truncated or damaged")


def _blocks(document: Any) -> Iterator[tuple[str, int, str]]:
    """(kind, heading level, text) of the body in document order; kind is title, heading or text."""
    from docx.table import Table

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            yield "text", 0, _table_text(block)
            continue
        style = block.style.name if block.style is not None else ""
        text = block.text.strip()
        if style == "Title":
            yield "title", 0, " ".join(text.split())
        elif style.startswith(HEADING_PREFIX) and style[len(HEADING_PREFIX) :].isdigit():
            yield "heading", int(style[len(HEADING_PREFIX) :]), " ".join(text.split())
        elif style.startswith(LIST_PREFIX) and text:
            yield "text", 0, f"- {text}"
        else:
            yield "text", 0, text


def _table_text(table: Any) -> str:
    """One line per row, cells joined by " | "; a merged cell is named once per row."""
    lines = []
    for row in table.rows:
        cells: list[Any] = []
        for cell in row.cells:
            if not cells or cell is not cells[-1]:  # python-docx repeats a horizontally merged cell
                cells.append(cell)
        texts = [_cell_text(cell) for cell in cells]
        if any(texts):
            lines.append(" | ".join(texts))
    return "\n".join(lines)


def _cell_text(cell: Any) -> str:
    """A cell's paragraphs and nested tables on one line, so a row stays one line."""
    from docx.table import Table

    parts = [_table_text(block) if isinstance(block, Table) else block.text for block in cell.iter_inner_content()]
    return " ".join(" ".join(parts).split())


def _sections(blocks: list[tuple[str, int, str]]) -> Iterator[TextSection]:
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    for kind, level, text in blocks:
        if kind == "heading":
            yield TextSection("\n".join(lines), tuple(heading for _level, heading in path))
            lines = []
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, text))
        elif kind == "text" and text:
            lines.append(text)
    yield TextSection("\n".join(lines), tuple(heading for _level, heading in path))

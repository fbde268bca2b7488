"""Plain text: UTF-8, or UTF-16/32 when a byte order mark says so. decode_text is shared by the
other text formats (Markdown), so every one quarantines undecodable bytes with the same reasons."""

from __future__ import annotations

import codecs
from collections.abc import Iterator

from grace.resources.text.readers.base import Reader, ReadLimits, TextSection, Unreadable

# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def bom_codec(data: bytes) -> tuple[str, int] | None:
    """(codec, length of the mark) when data starts with a byte order mark, else None."""
    for mark, codec in BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return codec, len(mark)
    return None


def decode_text(data: bytes) -> str:
    """The text of data: by its byte order mark if it has one, else as UTF-8; Unreadable if it is
    empty, binary, not in its encoding, or only whitespace."""
    if not data:
        raise Unreadable("empty file; add text to it")
    marked = bom_codec(data)
    codec, start = marked if marked is not None else ("utf-8", 0)
    if codec == "utf-8":
        # A NUL is checked before decoding: it is valid UTF-8, but no text file holds one.
        nul = data.find(b"\0")
        if nul >= 0:
            raise _binary(nul)
    try:
        text = data[start:].decode(codec)
    except UnicodeDecodeError as error:
        offset = start + error.start
        encoding = codec.upper().removesuffix("-LE").removesuffix("-BE")
        marked_as = "" if encoding == "UTF-8" else " as its byte order mark says"
        raise Unreadable(
            f"not {encoding}{marked_as}: byte 0x{data[offset]:02x} at offset {offset} is invalid; "
            "re-save the file as UTF-8"
        ) from None
    nul_char = text.find("\0")
    if nul_char >= 0:  # UTF-16/32 text holds zero bytes, so only a decoded NUL character is binary
        raise _binary(start + len(text[:nul_char].encode(codec)))
    if not text.strip():
        raise Unreadable("contains only whitespace; add text to it")
    return text


def _binary(offset: int) -> Unreadable:
    return Unreadable(f"binary content (NUL byte at offset {offset}); only UTF-8 text is ingested")


class PlainTextReader(Reader):
    suffixes = (".txt",)
    version = "1"

    def sections(self, data: bytes, name: str, limits: ReadLimits) -> tuple[str, Iterator[TextSection]]:
        return name, iter([TextSection(decode_text(data))])

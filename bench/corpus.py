"""A deterministic English-like corpus for benchmarks: words drawn from Python's own docstrings."""

from __future__ import annotations

import pydoc
import random
import re

_MODULES = ["os", "re", "json", "pathlib", "collections", "itertools", "functools", "typing", "argparse", "logging"]


def vocabulary() -> list[str]:
    words: set[str] = set()
    for name in _MODULES:
        words.update(re.findall(r"[A-Za-z]{3,12}", pydoc.render_doc(name, renderer=pydoc.plaintext)))
    return sorted(words)


def documents(count: int, words_per_document: int, seed: int = 0) -> dict[str, str]:
    """count files of roughly words_per_document words, in sentences and paragraphs."""
    rng = random.Random(seed)
    vocab = vocabulary()
    corpus = {}
    for number in range(count):
        sentences, written = [], 0
        while written < words_per_document:
            length = rng.randint(6, 22)
            sentence = " ".join(rng.choice(vocab) for _ in range(length))
            sentences.append(sentence.capitalize() + ".")
            written += length
        paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)]
        corpus[f"doc{number:05d}.txt"] = "\n\n".join(paragraphs)
    return corpus

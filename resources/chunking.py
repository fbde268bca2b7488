"""Token-aware chunking: every chunk fits the model's window, so nothing is cut silently."""

from __future__ import annotations

import functools
import hashlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from grace.core.manifest import Manifest

SPECIAL_TOKENS = 2  # [CLS] and [SEP], which the model adds to every chunk
SENTENCE_ENDS = (".", "!", "?", ";", ":", "\n")


@dataclass(frozen=True)
class Chunk:
    text: str
    token_count: int  # including the special tokens

    @property
    def chunk_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


class Chunker:
    """Splits text into overlapping windows of at most max_tokens model tokens.

    Cuts fall on word starts, preferably after a sentence end, and every chunk is
    re-tokenized to prove it fits.
    """

    def __init__(self, tokenizer_file: Path, max_tokens: int = 256, overlap_tokens: int = 32):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.budget = max_tokens - SPECIAL_TOKENS
        self.overlap = overlap_tokens
        digest = hashlib.sha256(Path(tokenizer_file).read_bytes()).hexdigest()[:16]
        self.settings_key = f"tokenizer={digest};max={max_tokens};overlap={overlap_tokens};v1"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids) + SPECIAL_TOKENS

    def split(self, text: str) -> list[Chunk]:
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        offsets, word_ids = encoding.offsets, encoding.word_ids
        total = len(offsets)
        word_starts = [i for i in range(total) if i == 0 or word_ids[i] != word_ids[i - 1]]
        chunks: list[Chunk] = []
        start = 0
        while start < total:
            end = self._cut(text, offsets, word_starts, start, total)
            while True:
                piece = text[offsets[start][0] : offsets[end - 1][1]]
                count = self.count_tokens(piece)
                if count - SPECIAL_TOKENS <= self.budget or end - start == 1:
                    break
                end -= 1
            chunks.append(Chunk(piece, count))
            if end >= total:
                break
            start = self._next_start(word_starts, start, end)
        return chunks

    def _cut(self, text: str, offsets: list, word_starts: list[int], start: int, total: int) -> int:
        """Exclusive end token of the chunk starting at start."""
        limit = start + self.budget
        if limit >= total:
            return total
        candidates = word_starts[bisect_right(word_starts, start + self.budget // 2) : bisect_right(word_starts, limit)]
        for index in reversed(candidates):
            gap = text[offsets[index - 1][1] - 1 : offsets[index][0]]
            if any(mark in gap for mark in SENTENCE_ENDS):
                return index
        return candidates[-1] if candidates else limit

    def _next_start(self, word_starts: list[int], start: int, end: int) -> int:
        position = bisect_left(word_starts, max(end - self.overlap, start + 1))
        return word_starts[position] if position < len(word_starts) and word_starts[position] < end else end


def chunker_for(manifest: Manifest, tokenizer_file: Path) -> Chunker:
    """The manifest's chunker over the model's tokenizer, built once per process."""
    return _chunker(tokenizer_file, manifest.chunking.max_tokens, manifest.chunking.overlap_tokens)


@functools.cache
def _chunker(tokenizer_file: Path, max_tokens: int, overlap_tokens: int) -> Chunker:
    return Chunker(tokenizer_file, max_tokens, overlap_tokens)

"""Token-aware chunking: every chunk fits the model's window, so nothing is cut silently, and stays
inside one section of its document, so a hit can say where it is (title, heading path, pages)."""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from grace.core.manifest import Manifest
from grace.core.process_caches import CHUNKERS
from grace.resources.text.readers.base import ExtractedDocument, TextSection, under_heading

SPECIAL_TOKENS = 2  # [CLS] and [SEP], which the model adds to every chunk
SENTENCE_ENDS = (".", "!", "?", ";", ":", "\n")
# A chunk holds at most max_tokens * CHARS_PER_TOKEN characters. The tokenizer makes one [UNK] of
# any word over 100 characters, so without a bound a 5 MB line with no spaces is a 3-token chunk.
CHARS_PER_TOKEN = 16
TINY_SHARE = 4  # a section under a quarter of the window joins the next one rather than be a crumb


@dataclass(frozen=True)
class Chunk:
    text: str
    token_count: int  # including the special tokens
    title: str = ""
    heading: tuple[str, ...] = ()
    first_page: int | None = None
    last_page: int | None = None

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
        self.max_chars = max_tokens * CHARS_PER_TOKEN
        digest = hashlib.sha256(Path(tokenizer_file).read_bytes()).hexdigest()[:16]
        self.settings_key = (
            f"tokenizer={digest};max={max_tokens};overlap={overlap_tokens};chars={self.max_chars};sections;v2"
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids) + SPECIAL_TOKENS

    def split(self, text: str) -> list[Chunk]:
        return [Chunk(text[start:end], count) for start, end, count in self._windows(text)]

    def split_document(self, document: ExtractedDocument) -> list[Chunk]:
        """The document's chunks, none crossing from one heading to another unless a section is tiny."""
        chunks = []
        for block in self._blocks(document.sections):
            for start, end, count in self._windows(block.text):
                first, last = block.pages(start, end)
                chunks.append(Chunk(block.text[start:end], count, document.title, block.heading, first, last))
        return chunks

    def _windows(self, text: str) -> Iterator[tuple[int, int, int]]:
        """(start, end, token count) of each chunk of text, by character offset."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        offsets, word_ids = encoding.offsets, encoding.word_ids
        total = len(offsets)
        word_starts = [i for i in range(total) if i == 0 or word_ids[i] != word_ids[i - 1]]
        token_ends = [end for _start, end in offsets]
        start = 0
        while start < total:
            end = self._cut(text, offsets, word_starts, start, total)
            end = min(end, bisect_right(token_ends, offsets[start][0] + self.max_chars, lo=start))
            if end == start:  # one token longer than max_chars: an [UNK] of a huge word
                yield from self._slices(text, *offsets[start])
                start += 1
                continue
            while True:
                piece_start, piece_end = offsets[start][0], offsets[end - 1][1]
                count = self.count_tokens(text[piece_start:piece_end])
                if count - SPECIAL_TOKENS <= self.budget or end - start == 1:
                    break
                end -= 1
            yield piece_start, piece_end, count
            if end >= total:
                break
            start = self._next_start(word_starts, start, end)

    def _slices(self, text: str, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """Character slices of text[start:end], each within max_chars and the token budget."""
        for slice_start in range(start, end, self.max_chars):
            slice_end = min(slice_start + self.max_chars, end)
            count = self.count_tokens(text[slice_start:slice_end])
            if count - SPECIAL_TOKENS <= self.budget or slice_end - slice_start == 1:
                yield slice_start, slice_end, count
            else:
                middle = (slice_start + slice_end) // 2
                yield from self._slices(text, slice_start, middle)
                yield from self._slices(text, middle, slice_end)

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

    def _blocks(self, sections: Sequence[TextSection]) -> list[_Block]:
        """Runs of sections under one heading (a PDF's pages run on), a tiny run joined to the next."""
        runs: list[_Block] = []
        for section in sections:
            if runs and runs[-1].heading == section.heading:
                runs[-1].append(section.text, [(0, section)])
            else:
                runs.append(_Block(section.heading, under_heading(section), [(0, section)]))
        blocks: list[_Block] = []
        for run in runs:
            if blocks and self._tiny(blocks[-1]) and self._fits(blocks[-1], run):
                blocks[-1].append(run.text, run.parts)
            else:
                blocks.append(run)
        return blocks

    def _tiny(self, block: _Block) -> bool:
        return len(block.text) < self.max_chars and self.count_tokens(block.text) - SPECIAL_TOKENS < (
            self.budget // TINY_SHARE
        )

    def _fits(self, block: _Block, after: _Block) -> bool:
        joined = len(block.text) + len(after.text) + 2
        return joined <= self.max_chars and self.count_tokens(f"{block.text}\n\n{after.text}") - SPECIAL_TOKENS <= (
            self.budget
        )


@dataclass
class _Block:
    """Text cut as one, under the heading of its first section, and where each section starts in it."""

    heading: tuple[str, ...]
    text: str
    parts: list[tuple[int, TextSection]] = field(default_factory=list)

    def append(self, text: str, parts: Sequence[tuple[int, TextSection]]) -> None:
        """Append text after a blank line; parts are its sections, by offset in text."""
        base = len(self.text) + 2
        self.parts += [(base + offset, section) for offset, section in parts]
        self.text = f"{self.text}\n\n{text}"

    def pages(self, start: int, end: int) -> tuple[int | None, int | None]:
        """First and last page of the sections text[start:end] overlaps; None for unpaged text."""
        offsets = [offset for offset, _section in self.parts]
        first = self.parts[max(bisect_right(offsets, start) - 1, 0)][1]
        last = self.parts[max(bisect_left(offsets, end) - 1, 0)][1]
        return first.first_page, last.last_page


def chunker_for(manifest: Manifest, tokenizer_file: Path) -> Chunker:
    """The manifest's chunker over the model's tokenizer, built once per process (CHUNKERS)."""
    max_tokens, overlap_tokens = manifest.chunking.max_tokens, manifest.chunking.overlap_tokens
    return CHUNKERS.get_or_make(
        (tokenizer_file, max_tokens, overlap_tokens), lambda: Chunker(tokenizer_file, max_tokens, overlap_tokens)
    )

"""store.lexical: BM25 over keyed hashes of the chunks' terms, exact for what is live right now.

Postings are written with the chunk rows that need them, in the chunks step's transaction
(Chunks.stage), and belong to a chunk text like its vectors do. A query joins them to the live
chunks of active documents, so a chunk is lexically searchable exactly while it is live: no
second index to bring up to date, and a crash leaves nothing half done. Terms are looked up by
their HMAC under the store's term key (resources/keys/term_key.py), never stored as they are.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, and_, delete, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from grace.resources.db.lexical_tables import lexical_chunks, lexical_terms
from grace.resources.db.schema import batches, chunks, documents, staged_chunks, utc_now
from grace.resources.keys.term_key import term_hasher
from grace.resources.store.embeddings import hash_range
from grace.resources.store.layout import ShardLayout
from grace.resources.store.texts import SealedText
from grace.resources.text.terms import LexicalQuery, terms

K1, B = 1.2, 0.75  # BM25's usual constants
COMMON_POSTINGS = 1000  # a term in more chunk texts than this is common: see LexicalIndex.search
CORPUS_STATS_SECONDS = 5.0  # the live chunk count and mean length move slowly: read them at most this often
UNREFERENCED_GRACE = timedelta(minutes=30)  # as for vectors: a writer may be about to use postings it found
BACKFILL_BATCH = 500
LEXICAL_COMPARED = 200  # chunks per shard whose postings index_matches_store recomputes from their text


@dataclass(frozen=True)
class Postings:
    """One chunk text's terms, hashed, with their counts."""

    chunk_hash: str
    length: int
    frequencies: dict[bytes, int]


class LexicalIndex:
    """store.lexical: writes postings with the chunks, ranks live chunks for a query, sweeps orphans."""

    def __init__(self, engine: Engine, writer: Engine, layout: ShardLayout, texts: SealedText):
        self.engine, self.writer, self.layout, self.texts = engine, writer, layout, texts
        self._corpus: tuple[float, int, float] | None = None  # (read at, live chunks, mean length)
        self._common: dict[bytes, tuple[float, int]] = {}  # a common term's chunk texts: (read at, count)

    def postings(self, texts: Iterable[tuple[str, str]]) -> list[Postings]:
        """Postings of (chunk_hash, plaintext) pairs, one per hash. Call before a write transaction
        opens: the first call on a store makes its term key."""
        hash_term = term_hasher(self.texts.keys().term_key())
        hashed: dict[str, bytes] = {}  # each distinct term is hashed once per call, not once per occurrence
        made: dict[str, Postings] = {}
        for chunk_hash, text in texts:
            if chunk_hash not in made:
                counts = Counter(terms(text))
                frequencies: dict[bytes, int] = {}
                for term, count in counts.items():
                    digest = hashed.get(term)
                    if digest is None:
                        digest = hashed[term] = hash_term(term)
                    frequencies[digest] = frequencies.get(digest, 0) + count
                made[chunk_hash] = Postings(chunk_hash, sum(counts.values()), frequencies)
        return list(made.values())

    def write(self, connection: Connection, postings: Sequence[Postings]) -> None:
        """Store postings in the caller's transaction; a text already indexed (by any writer) is left as it is."""
        if not postings:
            return
        dialect = sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert
        now = utc_now()
        for batch in batches(list(postings), 500):
            by_hash = {p.chunk_hash: p for p in batch}
            known = select(lexical_chunks.c.chunk_hash).where(lexical_chunks.c.chunk_hash.in_(list(by_hash)))
            new = set(by_hash) - set(connection.execute(known).scalars())
            if not new:
                continue
            # A writer racing on the same text inserts the same rows: whichever commits second changes nothing.
            rows = [dict(chunk_hash=h, length=by_hash[h].length, created_at=now) for h in sorted(new)]
            connection.execute(dialect(lexical_chunks).on_conflict_do_nothing(), rows)
            ids = select(lexical_chunks.c.chunk_hash, lexical_chunks.c.id).where(lexical_chunks.c.chunk_hash.in_(new))
            terms_rows = sorted(  # in key order: each insert lands beside the one before
                (term, text_id, count)
                for chunk_hash, text_id in connection.execute(ids)
                for term, count in by_hash[chunk_hash].frequencies.items()
            )
            if not terms_rows:
                continue
            if connection.dialect.name == "sqlite":  # SQLAlchemy's handling of each row's parameters doubles the cost
                connection.exec_driver_sql(_SQLITE_INSERT_TERMS, terms_rows)
            else:
                rows = [dict(term=term, text_id=text_id, frequency=count) for term, text_id, count in terms_rows]
                connection.execute(dialect(lexical_terms).on_conflict_do_nothing(), rows)

    def search(self, query: LexicalQuery, limit: int | None) -> list[tuple[int, float]]:
        """Up to limit (None: all) (chunk id, BM25 score) of live chunks, best first, ties by id; a query with
        phrases returns only chunks holding every phrase's words (the caller checks their order in the text).

        A common term, in over COMMON_POSTINGS chunk texts (`error`, or the `http` that every
        `HttpServerError` holds), is scored only on the chunks the query's rarer terms matched, as
        Lucene's common-terms query did: its postings would cost more to read than the rest of the
        query, and its low idf seldom decides what ranks first. Its idf comes from a count cached
        like the corpus statistics. A query whose terms are all common, or whose rarer terms match
        no live chunk, reads the common ones whole."""
        if not query.terms:
            return []
        hash_term = term_hasher(self.texts.keys().term_key())
        hashed = {hash_term(term) for term in query.terms}
        required = {hash_term(term) for term in query.required}
        live, mean_length = self._corpus_stats()
        with self.engine.connect() as connection:
            common = {term for term in hashed if _postings_over(connection, term, COMMON_POSTINGS)}
            rows = _matches(connection, hashed - common)
            candidates = {row.text_id for row in rows}
            if common and candidates:
                rows += _matches(connection, common, candidates)
                frequency_of = Counter(row.term for row in rows if row.term not in common)
                frequency_of.update(self._common_frequencies(connection, common))
            else:
                rows += _matches(connection, common)
                frequency_of = Counter(row.term for row in rows)  # chunks per term, among the live ones
        by_chunk: dict[int, list] = {}
        for row in rows:
            by_chunk.setdefault(row.id, []).append(row)
        idf = {term: _idf(live, df) for term, df in frequency_of.items()}
        scored = []
        for chunk_id, matched in by_chunk.items():
            if required and not required <= {row.term for row in matched}:
                continue
            norm = K1 * (1 - B + B * matched[0].length / max(mean_length, 1.0))
            score = sum(idf[row.term] * row.frequency * (K1 + 1) / (row.frequency + norm) for row in matched)
            scored.append((chunk_id, score))
        scored.sort(key=lambda pair: (-pair[1], pair[0]))
        return scored if limit is None else scored[:limit]

    def missing(self, shard: int | None = None, shards: int | None = None) -> int:
        """Live chunks (of the shard, or all) whose text has no postings: cut before release 0.7."""
        query = select(func.count()).select_from(chunks).where(~_indexed())
        if shard is not None:
            self.layout.epoch(shards)
            query = query.where(chunks.c.shard == shard)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def backfill(self, shard: int, shards: int, batch_size: int = BACKFILL_BATCH) -> int:
        """Write the postings live chunks of the shard lack (cut before release 0.7); how many texts got them."""
        self.layout.epoch(shards)
        done, after = 0, 0
        while True:
            query = select(chunks.c.id).where(chunks.c.shard == shard, chunks.c.id > after, ~_indexed())
            with self.engine.connect() as connection:
                ids = list(connection.execute(query.order_by(chunks.c.id).limit(batch_size)).scalars())
            if not ids:
                return done
            hits = self.texts.chunk_hits(ids)
            hashes = self._hashes_of(ids)
            made = self.postings((hashes[chunk_id], hit.text) for chunk_id, hit in hits.items())
            with self.writer.begin() as connection:
                self.write(connection, made)
            done += len(made)
            after = ids[-1]

    def delete_unreferenced(
        self, part: int = 0, parts: int = 1, grace: timedelta = UNREFERENCED_GRACE, now: datetime | None = None
    ) -> int:
        """Delete postings of texts in hash range part/parts (as for vectors) that no live or staged chunk
        holds and that are older than grace; how many texts went."""
        cutoff = (now or utc_now()) - grace
        in_range = [_orphaned(cutoff)]
        low, high = hash_range(part, parts)
        if low is not None:
            in_range.append(lexical_chunks.c.chunk_hash >= low)
        if high is not None:
            in_range.append(lexical_chunks.c.chunk_hash < high)
        deleted = 0
        while True:
            with self.writer.begin() as connection:
                query = select(lexical_chunks.c.id).where(*in_range).limit(500)
                orphans = list(connection.execute(query).scalars())
                if not orphans:
                    return deleted
                connection.execute(delete(lexical_terms).where(lexical_terms.c.text_id.in_(orphans)))
                deleted += connection.execute(delete(lexical_chunks).where(lexical_chunks.c.id.in_(orphans))).rowcount

    def disagreements(self, shard: int, shards: int, limit: int = LEXICAL_COMPARED) -> tuple[int, list[int]]:
        """(chunks compared, the ids of those whose stored postings differ from their text's): up to limit
        live chunks of the shard, spread by id."""
        self.layout.epoch(shards)
        with self.engine.connect() as connection:
            ids = list(connection.execute(select(chunks.c.id).where(chunks.c.shard == shard, _indexed())).scalars())
        if len(ids) > limit:
            ids = [ids[round(i * (len(ids) - 1) / max(limit - 1, 1))] for i in range(limit)]
        hits, hashes = self.texts.chunk_hits(ids), self._hashes_of(ids)
        expected = {p.chunk_hash: p for p in self.postings((hashes[i], hit.text) for i, hit in hits.items())}
        stored = self._stored(list(expected))
        return len(hits), sorted(i for i in hits if stored.get(hashes[i]) != expected[hashes[i]])

    def repair(self, shard: int, shards: int) -> int:
        """Rewrite the postings of the shard's chunks that disagree with their text (of a spread, as
        disagreements reads them), then index those that have none; how many texts were written."""
        _compared, wrong = self.disagreements(shard, shards)
        if wrong:
            hashes = sorted(set(self._hashes_of(wrong).values()))
            with self.writer.begin() as connection:
                ids = select(lexical_chunks.c.id).where(lexical_chunks.c.chunk_hash.in_(hashes))
                connection.execute(delete(lexical_terms).where(lexical_terms.c.text_id.in_(ids)))
                connection.execute(delete(lexical_chunks).where(lexical_chunks.c.chunk_hash.in_(hashes)))
        return self.backfill(shard, shards)

    def _stored(self, chunk_hashes: list[str]) -> dict[str, Postings]:
        found: dict[str, Postings] = {}
        query = (
            select(
                lexical_chunks.c.chunk_hash, lexical_chunks.c.length, lexical_terms.c.term, lexical_terms.c.frequency
            )
            .join(lexical_terms, lexical_terms.c.text_id == lexical_chunks.c.id, isouter=True)
            .where(lexical_chunks.c.chunk_hash.in_(chunk_hashes))
        )
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                entry = found.setdefault(row.chunk_hash, Postings(row.chunk_hash, row.length, {}))
                if row.term is not None:
                    entry.frequencies[bytes(row.term)] = row.frequency
        return found

    def _hashes_of(self, chunk_ids: Sequence[int]) -> dict[int, str]:
        with self.engine.connect() as connection:
            query = select(chunks.c.id, chunks.c.chunk_hash).where(chunks.c.id.in_(list(chunk_ids)))
            return dict(connection.execute(query).all())

    def _corpus_stats(self) -> tuple[int, float]:
        known = self._corpus
        if known is None or time.monotonic() - known[0] >= CORPUS_STATS_SECONDS:
            query = (
                select(func.count(), func.avg(lexical_chunks.c.length))
                .select_from(chunks)
                .join(documents, documents.c.id == chunks.c.document_id)
                .join(lexical_chunks, lexical_chunks.c.chunk_hash == chunks.c.chunk_hash)
                .where(documents.c.status == "active")
            )
            with self.engine.connect() as connection:
                count, mean = connection.execute(query).one()
            known = self._corpus = (time.monotonic(), int(count), float(mean or 0.0))
        return known[1], known[2]

    def _common_frequencies(self, connection: Connection, common: set[bytes]) -> dict[bytes, int]:
        """Chunk texts holding each common term, counted at most every CORPUS_STATS_SECONDS: a common
        term's count is the slow part of its idf, and it moves as slowly as the corpus."""
        now = time.monotonic()
        for term in common:
            known = self._common.get(term)
            if known is None or now - known[0] >= CORPUS_STATS_SECONDS:
                count = connection.execute(select(func.count()).where(lexical_terms.c.term == term)).scalar_one()
                self._common[term] = (now, int(count))
        return {term: self._common[term][1] for term in common}


def _indexed():
    return select(lexical_chunks.c.chunk_hash).where(lexical_chunks.c.chunk_hash == chunks.c.chunk_hash).exists()


def _orphaned(cutoff: datetime):
    live = select(chunks.c.id).where(chunks.c.chunk_hash == lexical_chunks.c.chunk_hash).exists()
    staged = select(staged_chunks.c.ordinal).where(staged_chunks.c.chunk_hash == lexical_chunks.c.chunk_hash).exists()
    return and_(lexical_chunks.c.created_at < cutoff, ~live, ~staged)


_SQLITE_INSERT_TERMS = "INSERT OR IGNORE INTO lexical_terms (term, text_id, frequency) VALUES (?, ?, ?)"

# A term's postings among the live chunks of active documents, with each chunk's length.
_MATCHES = (
    select(
        chunks.c.id, lexical_terms.c.text_id, lexical_terms.c.term, lexical_terms.c.frequency, lexical_chunks.c.length
    )
    .select_from(lexical_terms)
    .join(lexical_chunks, lexical_chunks.c.id == lexical_terms.c.text_id)
    .join(chunks, chunks.c.chunk_hash == lexical_chunks.c.chunk_hash)
    .join(documents, documents.c.id == chunks.c.document_id)
    .where(documents.c.status == "active")
)


def _matches(connection: Connection, terms: set[bytes], text_ids: set[int] | None = None) -> list:
    """The live postings of terms (_MATCHES rows), only of text_ids if given."""
    rows: list = []
    id_batches = [None] if text_ids is None else list(batches(sorted(text_ids), 500))
    for batch in batches(sorted(terms), 500):
        for ids in id_batches:
            where = lexical_terms.c.term.in_(batch)
            if ids is not None:
                where = and_(where, lexical_terms.c.text_id.in_(ids))
            rows += connection.execute(_MATCHES.where(where)).all()
    return rows


def _postings_over(connection: Connection, term: bytes, limit: int) -> bool:
    """Whether more than limit chunk texts hold term, reading at most limit + 1 of its postings."""
    first = select(lexical_terms.c.text_id).where(lexical_terms.c.term == term).limit(limit + 1).subquery()
    return connection.execute(select(func.count()).select_from(first)).scalar_one() > limit


def _idf(live: int, chunks_with_term: int) -> float:
    """BM25's idf; a count that includes texts not swept yet may pass the live chunks, so it is capped."""
    frequency = min(chunks_with_term, live)
    return math.log(1 + (live - frequency + 0.5) / (frequency + 0.5))

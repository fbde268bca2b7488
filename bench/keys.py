"""Key rotation costs: rewrapping encrypted rows to a new key version, and ingest with encryption vs without.

    .venv/bin/python bench/keys.py [--rows 100000] [--repeats 3] [--json]

Rewrap: a SQLite store in a temporary folder holds --rows encrypted rows (1% documents.text,
99% chunks.text of ~1,000 characters each, under version 1); each repeat forces a new primary
version and times rewrapping every row to it, in batches of keys.rewrap_batch (500), as the
rotate_keys job does. Ingest: the same corpus ingested by the real pipeline (sensor tick, then
documents -> chunks -> embeddings per shard, real Dagster, real model, SQLite), with encryption
and without, alternately in one process; the model is loaded once, before timing. With --json,
the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, insert, select  # noqa: E402

from bench.corpus import documents as corpus_of  # noqa: E402
from grace.core.keys_config import KeysConfig  # noqa: E402
from grace.resources.db.key_tables import CHUNK_TEXT, DOCUMENT_TEXT  # noqa: E402
from grace.resources.db.schema import chunks, documents, utc_now  # noqa: E402
from grace.resources.keys.vault import KeyVault  # noqa: E402
from grace.resources.store.store import Store  # noqa: E402
from grace.resources.wiring.dagster_resources import EmbedderResource  # noqa: E402
from tests.helpers.fakes import HashingEmbedderResource  # noqa: E402
from tests.helpers.harness import Deployment  # noqa: E402

CHUNKS_PER_DOCUMENT = 99
CHUNK_WORDS = 160  # ~1,000 characters: a chunk of about 250 model tokens
INSERT_BATCH = 5_000


def rewrap_bench(rows: int, repeats: int, batch: int) -> dict:
    """Median seconds to rewrap every one of `rows` encrypted rows to a new primary version."""
    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"sqlite:///{Path(folder) / 'grace.db'}")
        vault = KeyVault(store.engine, os.urandom(32), timedelta(days=30), 2)
        vault.ensure_primary()
        written = fill(vault, rows)
        seconds, rewrapped = [], []
        for repeat in range(repeats):
            vault.rotate(force=True)
            started = time.perf_counter()
            rewrapped.append(sum(vault.rewrap_all(batch).values()))
            seconds.append(time.perf_counter() - started)
            print(f"rewrap {repeat + 1}: {rewrapped[-1]} rows in {seconds[-1]:.2f} s", file=sys.stderr)
        store.dispose()
    assert rewrapped == [written] * repeats, f"every row moves each time: {rewrapped} of {written}"
    median = statistics.median(seconds)
    return {
        "rewrap_rows": written,
        "rewrap_s": round(median, 2),
        "rewrap_rows_per_s": round(written / median),
        "rewrap_s_each": [round(value, 2) for value in seconds],
        "rewrap_batch": batch,
    }


def fill(vault: KeyVault, rows: int) -> int:
    """rows encrypted texts under the primary: one document per CHUNKS_PER_DOCUMENT chunks; rows written."""
    words = "the of rotation key heron ledger quarterly ocean cipher summary minutes budget forecast".split()
    generator = random.Random(7)
    document_count = max(1, rows // (CHUNKS_PER_DOCUMENT + 1))
    chunk_count = rows - document_count
    now = utc_now()
    document_rows = []
    for number in range(document_count):
        document_id = f"{number:032x}"
        text = " ".join(generator.choices(words, k=CHUNK_WORDS))
        document_rows.append(
            {
                "id": document_id,
                "source": "bench",
                "path": f"{number}.md",
                "shard_key": number,
                "size": len(text),
                "mtime_ns": 0,
                "disk_hash": document_id,
                "status": "active",
                "updated_at": now,
                "text": vault.encrypt(text, DOCUMENT_TEXT.aad((document_id,))),
            }
        )
    with vault.writer.begin() as connection:
        connection.execute(insert(documents), document_rows)
    for start in range(0, chunk_count, INSERT_BATCH):
        chunk_rows = []
        for chunk_id in range(start + 1, min(start + INSERT_BATCH, chunk_count) + 1):
            text = " ".join(generator.choices(words, k=CHUNK_WORDS))
            document_id, chunk_hash = document_rows[chunk_id % document_count]["id"], f"{chunk_id:064x}"
            chunk_rows.append(
                {
                    "id": chunk_id,
                    "document_id": document_id,
                    "ordinal": chunk_id // document_count,
                    "chunk_hash": chunk_hash,
                    "token_count": 250,
                    "text": vault.encrypt(text, CHUNK_TEXT.aad((document_id, chunk_hash))),
                }
            )
        with vault.writer.begin() as connection:
            connection.execute(insert(chunks), chunk_rows)
    return document_count + chunk_count


def ingest_bench(corpus: dict[str, str], embedder, repeats: int, label: str) -> dict:
    """Chunks/s of the pipeline with encryption and without, in alternating order; the median of the ratios."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    ratios = []
    for repeat in range(repeats):
        for encrypted in (True, False) if repeat % 2 == 0 else (False, True):  # drift hits both sides alike
            chunk_count, seconds = one_ingest(corpus, embedder, encrypted)
            rates[encrypted].append(chunk_count / seconds)
        ratios.append(rates[True][-1] / rates[False][-1])
        print(
            f"ingest {label} {repeat + 1}: {chunk_count} chunks; encrypted {rates[True][-1]:.1f} chunks/s, "
            f"plain {rates[False][-1]:.1f} chunks/s, ratio {ratios[-1]:.3f}",
            file=sys.stderr,
        )
    return {
        f"ingest_chunks_per_s_encrypted{label}": round(statistics.median(rates[True]), 2),
        f"ingest_chunks_per_s_plain{label}": round(statistics.median(rates[False]), 2),
        f"ingest_ratio_encrypted{label}": round(statistics.median(ratios), 3),
        f"ingest_ratios{label}": [round(ratio, 3) for ratio in ratios],
    }


def one_ingest(corpus: dict[str, str], embedder, encrypted: bool) -> tuple[int, float]:
    """(chunks stored, seconds) of one sensor tick plus one ingest run per shard, from an empty state dir."""
    with tempfile.TemporaryDirectory() as folder:
        deployment = Deployment(Path(folder), None, embedder, shards=4, max_bytes="20MB", encrypted=encrypted)
        for name, text in corpus.items():
            deployment.drop(name, text)
        started = time.perf_counter()
        deployment.sync(rebuild=False)
        seconds = time.perf_counter() - started
        store = deployment.store
        with store.engine.connect() as connection:
            chunk_count = connection.execute(select(func.count()).select_from(chunks)).scalar_one()
        store.dispose()
    return chunk_count, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="encrypted rows to rewrap (default 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="rewraps timed; the median is reported")
    parser.add_argument("--batch", type=int, default=KeysConfig().rewrap_batch, help="rows per transaction")
    parser.add_argument("--documents", type=int, default=20, help="files ingested per run (default 20)")
    parser.add_argument("--words", type=int, default=1200, help="words per file (default 1200)")
    parser.add_argument("--ingest-repeats", type=int, default=5, help="pairs of ingest runs (default 5)")
    parser.add_argument("--json", action="store_true", help="print every figure as one JSON object, last")
    args = parser.parse_args()
    figures = rewrap_bench(args.rows, args.repeats, args.batch)
    print(
        f"rewrap: {figures['rewrap_rows']} rows in {figures['rewrap_s']} s (median of {args.repeats}), "
        f"{figures['rewrap_rows_per_s']} rows/s (goal: 100k rows in <= 60 s)"
    )
    corpus = corpus_of(args.documents, args.words)
    model = EmbedderResource()
    model.get().encode(["warm up"])  # the cold load is no part of either side
    figures |= ingest_bench(corpus, model, args.ingest_repeats, "")
    # The model takes almost all of an ingest; without it, what encryption costs Grace's own work shows.
    figures |= ingest_bench(corpus_of(args.documents * 10, args.words), HashingEmbedderResource(), 3, "_own_work")
    print(
        f"ingest, real model: encrypted {figures['ingest_chunks_per_s_encrypted']} chunks/s, plain "
        f"{figures['ingest_chunks_per_s_plain']} chunks/s, ratio {figures['ingest_ratio_encrypted']} (goal >= 0.97); "
        f"Grace's own work (hashing embedder): ratio {figures['ingest_ratio_encrypted_own_work']}"
    )
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""Bad input at scale: 10,000 files dropped at once, 1% of them broken, through real sensor ticks
and real ingest runs. Every good file becomes searchable, every broken one is quarantined with
the reason of its kind, and no run fails as a whole."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import and_, func, select

from grace.resources.db.schema import chunks, documents, embeddings
from grace.resources.wiring.dagster_resources import EmbedderResource
from grace.sensors import scan
from tests.helpers.fakes import HashingEmbedder, HashingEmbedderResource
from tests.helpers.harness import Deployment

MAX_BYTES = 64_000  # "64KB" in the manifest
DIMENSION = 384  # of the hashing embedder for the 10,000 files
SYMLINK_REASON = "is a symlink; Grace never follows links out of a watched folder"
SECRET = "the vault combination is four four four"


@dataclass(frozen=True)
class Broken:
    """A hostile file: its bytes (None for a link out of the folder) and the reason it must get."""

    content: bytes | None
    reason: str


def binary(n: int) -> Broken:
    data = f"header {n}".encode() + b"\0\x01\x02 payload"
    offset = data.index(b"\0")
    return Broken(data, f"binary content (NUL byte at offset {offset}); only UTF-8 text is ingested")


def undecodable(n: int) -> Broken:
    data = f"caf{n} ".encode() + b"\xe9t\xe9 in Latin-1"
    offset = data.index(b"\xe9")
    return Broken(data, f"not UTF-8: byte 0xe9 at offset {offset} is invalid; re-save the file as UTF-8")


def oversized(n: int) -> Broken:
    data = (f"oversized {n} " * 8_000).encode()[: MAX_BYTES + 1 + n]
    return Broken(
        data,
        f"{len(data)} bytes is over the source's max_bytes ({MAX_BYTES}); "
        "raise max_bytes in grace.yaml or split the file",
    )


def empty(_n: int) -> Broken:
    return Broken(b"", "empty file; add text to it")


def whitespace(_n: int) -> Broken:
    return Broken(b" \n\t \r\n  ", "contains only whitespace; add text to it")


def symlink(_n: int) -> Broken:
    return Broken(None, SYMLINK_REASON)


# 25 + 25 + 20 + 10 + 10 + 10 = 100 broken files in 10,000.
KINDS = [binary] * 25 + [undecodable] * 25 + [oversized] * 20 + [empty] * 10 + [whitespace] * 10 + [symlink] * 10


def bucket(word: str, dimension: int) -> int:
    """The hashing embedder's coordinate for a word (tests/helpers/fakes.py)."""
    return int(hashlib.md5(word.encode()).hexdigest(), 16) % dimension


def unique_tokens(count: int, dimension: int, sampled: int) -> tuple[list[str], set[int]]:
    """count unique tokens, and the indexes of those sampled through search, spread over the drop.

    The hashing embedder folds words into `dimension` coordinates, so a token shared by no other
    file still collides with others. The sampled tokens get coordinates no other word uses, and
    their files hold the token alone: a query for the token is then that file's exact vector.
    """
    reserved: dict[int, str] = {}
    candidate = 0
    while len(reserved) < sampled:
        token = f"probe{candidate:05d}"
        reserved.setdefault(bucket(token, dimension), token)
        candidate += 1
    step = count // sampled
    chosen = set(range(step // 2, step * sampled, step))
    spare, tokens = iter(reserved.values()), []
    for n in range(count):
        suffix = 0
        while n not in chosen and bucket(token := f"tok{n:05d}x{suffix}", dimension) in reserved:
            suffix += 1
        tokens.append(next(spare) if n in chosen else token)
    return tokens, chosen


def good_text(token: str, sampled: bool) -> str:
    return token if sampled else f"filed note {token}"


def drop_all(
    deployment: Deployment, outside: Path, total: int, broken_every: int, good_tokens: list[str], sampled: set[int]
) -> tuple[dict[str, str], dict[str, Broken]]:
    """Write every file before the first tick; broken ones interleaved among the good ones.

    Returns ({path: token} of good files, {path: Broken} of broken files).
    """
    reserved = {bucket(good_tokens[i], DIMENSION) for i in sampled}
    assert not reserved & {bucket(word, DIMENSION) for word in good_text("", sampled=False).split()}
    good, broken = {}, {}
    tokens = iter(enumerate(good_tokens))
    for n in range(total):
        relative = f"d{n // 1000:02d}/f{n:05d}.txt"
        if n % broken_every == broken_every // 2:
            bad = KINDS[(n // broken_every) % len(KINDS)](n)
            if bad.content is None:
                target = outside / f"secret{n}.txt"
                target.write_text(SECRET)
                (deployment.inbox / relative).parent.mkdir(parents=True, exist_ok=True)
                (deployment.inbox / relative).symlink_to(target)
            else:
                deployment.drop(relative, bad.content)
            broken[relative] = bad
        else:
            index, token = next(tokens)
            deployment.drop(relative, good_text(token, index in sampled))
            good[relative] = token
    return good, broken


def settle(deployment: Deployment, max_rounds: int = 60) -> tuple[list, int]:
    """Tick and run every requested shard until a tick asks for nothing: (every run result, ticks)."""
    results = []
    for ticks in range(1, max_rounds + 1):
        requests = deployment.tick()
        if not requests:
            return results, ticks
        for shard in sorted({int(request.partition_key) for request in requests}):
            results.append(deployment.ingest(shard))
    raise AssertionError(f"the sensor still asked for runs after {max_rounds} ticks")


def embedded_paths(deployment: Deployment) -> tuple[set[str], int]:
    """(paths of active documents with at least one chunk, active chunks lacking a vector)."""
    model_id = deployment.embedder.model_id
    has_vector = and_(embeddings.c.chunk_hash == chunks.c.chunk_hash, embeddings.c.model_id == model_id)
    active_chunks = chunks.join(documents, documents.c.id == chunks.c.document_id)
    with deployment.store.engine.connect() as connection:
        paths = set(
            connection.execute(
                select(documents.c.path).select_from(active_chunks).where(documents.c.status == "active").distinct()
            ).scalars()
        )
        lacking = connection.execute(
            select(func.count())
            .select_from(active_chunks.outerjoin(embeddings, has_vector))
            .where(documents.c.status == "active", embeddings.c.chunk_hash.is_(None))
        ).scalar_one()
    return paths, lacking


def assert_outcome(deployment: Deployment, results: list, good: set[str], broken: dict[str, Broken]) -> None:
    # materialize raises when a run fails, so a run failing as a whole already fails the test there
    failed = [result.run_id for result in results if not result.success]
    assert results and not failed, f"{len(failed)} of {len(results)} runs failed as a whole"
    with deployment.store.engine.connect() as connection:
        statuses = dict(connection.execute(select(documents.c.path, documents.c.status)).all())
    assert {path for path, status in statuses.items() if status == "active"} == good
    reasons = {path: reason for _source, path, reason in deployment.store.documents.quarantined()}
    assert reasons == {path: bad.reason for path, bad in broken.items()}
    paths, lacking = embedded_paths(deployment)
    assert paths == good and lacking == 0
    for shard in range(deployment.manifest.index.shards):
        assert deployment.rebuild(shard).success
    total = deployment.stats()["total"]
    assert total["documents_active"] == len(good)
    assert total["documents_quarantined"] == len(broken)
    assert total["documents_pending"] == 0
    assert total["index_coverage"] == 1.0
    assert not any("vault combination" in hit.text for hit in deployment.search(SECRET, k=10))


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@pytest.mark.timeout(300)
def test_ten_thousand_files_one_percent_broken(tmp_path, store_url, outside, monkeypatch):
    monkeypatch.setattr(HashingEmbedder, "batch_size", 32)  # the real model's batch; 2 only serves crash tests
    # One batch of 1,000 files recorded per tick, however fast this machine lists: the drop spans
    # ten ticks, and runs ingest the first batches while the sensor's cursor still carries the rest.
    monkeypatch.setattr(scan, "SCAN_BUDGET_SECONDS", 0)
    deployment = Deployment(
        tmp_path, store_url, HashingEmbedderResource(dimension=DIMENSION), shards=4, max_bytes="64KB"
    )
    tokens, sampled = unique_tokens(9_900, DIMENSION, sampled=50)
    started = time.perf_counter()
    good, broken = drop_all(deployment, outside, 10_000, 100, tokens, sampled)
    assert (len(good), len(broken)) == (9_900, 100)
    dropped = time.perf_counter()
    results, ticks = settle(deployment)
    settled = time.perf_counter()
    assert ticks >= 10 + 1  # ten batches, then a tick that asks for nothing
    assert_outcome(deployment, results, set(good), broken)
    by_token = {token: path for path, token in good.items()}
    for index in sorted(sampled):
        token = tokens[index]
        assert [hit.path for hit in deployment.search(token, k=1)] == [by_token[token]], token
    print(
        f"\n{store_url.split(':')[0]}: drop {dropped - started:.1f} s, {ticks} ticks and {len(results)} runs "
        f"{settled - dropped:.1f} s, checks {time.perf_counter() - settled:.1f} s"
    )


REAL_TOPICS = {
    "lighthouse.txt": "The lighthouse keeper polished the brass lens before the winter storm reached the coast.",
    "sourdough.txt": "Feed the sourdough starter with rye flour and water, then let the dough rise overnight.",
    "violin.txt": "She tuned her violin and practised the difficult passage of the concerto for hours.",
    "glacier.txt": "The glacier has retreated two kilometres up the valley since the first survey.",
    "chess.txt": "In the endgame the grandmaster sacrificed his rook to promote the last pawn to a queen.",
}
ITEMS = ["copper wire", "oak barrels", "wool blankets", "glass jars", "steel bolts", "paper reams"]
CITIES = ["Lisbon", "Oslo", "Cairo", "Lima", "Perth", "Quebec", "Osaka"]


@pytest.mark.timeout(300)
def test_two_hundred_files_one_percent_broken_on_the_real_model(tmp_path, store_url, onnx_model_cache):
    embedder = EmbedderResource(backend="onnx-int8", cache_root=str(onnx_model_cache))
    deployment = Deployment(tmp_path, store_url, embedder, shards=4, max_bytes="64KB")
    good: set[str] = set()
    broken = {}
    for n in range(193):
        relative = f"logs/entry{n:03d}.txt"
        deployment.drop(relative, f"Shipping log {n}: {n % 40 + 3} crates of {ITEMS[n % 6]} left {CITIES[n % 7]}.")
        good.add(relative)
    for relative, text in REAL_TOPICS.items():
        deployment.drop(relative, text)
        good.add(relative)
    for n, kind in enumerate([binary, oversized]):
        relative = f"logs/broken{n}.txt"
        broken[relative] = kind(n)
        deployment.drop(relative, broken[relative].content)
    assert len(good) + len(broken) == 200
    results, _ticks = settle(deployment)
    assert_outcome(deployment, results, good, broken)
    queries = {
        "lighthouse.txt": "who looks after the beacon on the shore",
        "sourdough.txt": "how to bake bread with a starter",
        "violin.txt": "music practice on a string instrument",
        "glacier.txt": "melting ice in the mountains",
        "chess.txt": "a board game strategy with pieces",
    }
    for path, query in queries.items():
        assert [hit.path for hit in deployment.search(query, k=1, mode="dense")] == [path], query

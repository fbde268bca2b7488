"""Document and chunk text at rest: only tokens in the store, plaintext in every answer, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from grace.core.secrets import SecretError, create_key_file
from grace.resources.db.chunk_rows import NewChunk
from grace.resources.db.key_tables import CHUNK_TEXT, STORE_TEXT, DecryptionError, KeyEvent, WrongKek, token_version
from grace.resources.db.schema import ObservedFile, chunks, documents, staged_chunks
from grace.resources.keys.vault import KeyVault
from grace.resources.store.store import Store
from grace.resources.store.texts import TextNeedsKeys, UnreadableText
from grace.resources.wiring.dagster_resources import EmbedderResource, StoreResource
from tests.helpers.fakes import HashingEmbedderResource
from tests.helpers.harness import Deployment, encrypting_store
from tests.helpers.store_writes import replace_chunks, set_document_text, unprocessed_documents

ROOT = Path(__file__).resolve().parents[2]
LATER = timedelta(hours=1)  # past the vault's grace period for retired versions
DOCUMENTS = {
    "harbour.txt": "The quartermaster hid seventeen turquoise umbrellas beneath the lighthouse stairs. "
    "Nobody on the harbour ever asked why the gulls avoided that corner.",
    "orchard.md": "Marmalade recipes from the orchard: bitter oranges, demerara sugar and patience. "
    "Grandmother wrote the method on the back of a ferry timetable.",
    "ledger.txt": "Quarterly ledger notes: the zinc refinery invoice was paid twice in March.",
}
WHALES = "Blue whales sing in long low pulses that carry across whole ocean basins."
PHRASES = ["seventeen turquoise umbrellas", "demerara sugar and patience", "zinc refinery invoice"]


def ingested(root: Path, store_url: str, embedder=None, encrypted: bool = True) -> Deployment:
    deployment = Deployment(root, store_url, embedder or HashingEmbedderResource(), encrypted=encrypted)
    for name, text in DOCUMENTS.items():
        deployment.drop(name, text)
    deployment.sync()
    return deployment


def raw_texts(store: Store) -> list[str]:
    """Every stored value of every encrypted column, as the database holds it."""
    with store.engine.connect() as connection:
        return [
            value
            for column in STORE_TEXT
            for value in connection.execute(select(column.column).where(column.column.is_not(None))).scalars()
        ]


def sqlite_bytes(store_url: str) -> bytes:
    database = Path(store_url.removeprefix("sqlite:///"))
    files = [database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-journal")]
    return b"".join(path.read_bytes() for path in files if path.exists())


def vault_of(deployment: Deployment) -> KeyVault:
    return deployment.resources["key_vault"].get()


def chunk_row(store: Store, path: str) -> tuple[int, str]:
    """(chunk id, stored token) of a one-chunk document."""
    query = select(chunks.c.id, chunks.c.text).join(documents).where(documents.c.path == path)
    with store.engine.connect() as connection:
        return tuple(connection.execute(query).one())


def test_no_plaintext_reaches_the_store_and_search_reads_it_back(tmp_path, store_url):
    deployment = ingested(tmp_path, store_url)
    stored = raw_texts(deployment.store)
    assert len(stored) >= len(DOCUMENTS)  # a chunk each at least: live chunks hold their document's text
    assert all(token_version(value) == 1 for value in stored)
    assert not any(phrase in value for value in stored for phrase in PHRASES)
    if store_url.startswith("sqlite"):
        on_disk = sqlite_bytes(store_url)
        assert b"gk1:1:" in on_disk
        assert [phrase for phrase in PHRASES if phrase.encode() in on_disk] == []
    for name, text in DOCUMENTS.items():
        [best] = deployment.search(text, k=1)
        assert (best.path, best.text) == (name, text)


def test_headings_and_titles_are_sealed_and_every_hit_carries_them(tmp_path, store_url):
    deployment = Deployment(tmp_path, store_url, HashingEmbedderResource())
    body = "The keeper counts saffron crocus bulbs at low tide."
    deployment.drop("almanac.md", f"# Quince almanac\n\n## Tidal harvest of the marigold\n\n{body}\n")
    deployment.sync()
    [best] = deployment.search(body, k=1)
    assert (best.path, best.title, best.heading) == (
        "almanac.md",
        "Quince almanac",
        "Quince almanac > Tidal harvest of the marigold",
    )
    assert (best.first_page, best.last_page) == (None, None)  # pages are for PDFs
    stored = raw_texts(deployment.store)
    assert all(token_version(value) == 1 for value in stored)
    assert not any("marigold" in value or "Quince" in value for value in stored)
    if store_url.startswith("sqlite"):
        on_disk = sqlite_bytes(store_url)
        assert b"marigold" not in on_disk and b"Quince" not in on_disk


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_raw_file_check_finds_plaintext_when_text_is_not_encrypted(tmp_path, store_url):
    """The control for the grep above: the same ingest, unencrypted, leaves every phrase in the file."""
    ingested(tmp_path, store_url, encrypted=False)
    on_disk = sqlite_bytes(store_url)
    assert [phrase for phrase in PHRASES if phrase.encode() in on_disk] == PHRASES


def test_a_chunk_token_copied_into_another_row_is_left_out_of_search_and_audited(tmp_path, store_url):
    deployment = ingested(tmp_path, store_url)
    store, vault = deployment.store, vault_of(deployment)
    harbour_id, harbour_token = chunk_row(store, "harbour.txt")
    ledger_id, _ledger_token = chunk_row(store, "ledger.txt")
    with store.writer.begin() as connection:
        connection.execute(update(chunks).where(chunks.c.id == ledger_id).values(text=harbour_token))
    with pytest.warns(UnreadableText, match=f"chunk {ledger_id} of docs:ledger.txt left out: cannot decrypt"):
        hits = deployment.search(DOCUMENTS["ledger.txt"], k=3)
    assert ledger_id not in {hit.chunk_id for hit in hits}
    assert {hit.path for hit in hits} == {"harbour.txt", "orchard.md"}
    assert next(hit.text for hit in hits if hit.chunk_id == harbour_id) == DOCUMENTS["harbour.txt"]
    failed = vault.audit_entries()[-1]
    assert (failed.event, failed.version) == (KeyEvent.DECRYPT_FAILED, 1)
    assert "copied from another row" in failed.detail["reason"] and "turquoise" not in str(failed.detail)


def test_a_document_token_copied_into_another_document_stops_chunking(store_url):
    store = encrypting_store(store_url)
    files = [ObservedFile(name, 10, 1, f"hash-{name}") for name in ("a.txt", "b.txt")]
    store.ledger.record_scan("docs", files, [], [], [], shards=1)
    ids = {path: row.id for path, row in store.ledger.documents_of("docs").items()}
    set_document_text(store, ids["a.txt"], "hash-a.txt", "the text of a")
    set_document_text(store, ids["b.txt"], "hash-b.txt", "the text of b")
    assert sorted(document.text for page in store.texts.documents_to_chunk(0, 1, "s") for document in page) == [
        "the text of a",
        "the text of b",
    ]
    with store.writer.begin() as connection:
        token_a = connection.execute(select(documents.c.text).where(documents.c.id == ids["a.txt"])).scalar_one()
        connection.execute(update(documents).where(documents.c.id == ids["b.txt"]).values(text=token_a))
    with pytest.raises(DecryptionError, match="copied from another row"):
        list(store.texts.documents_to_chunk(0, 1, "s"))


def test_rotation_and_rewrap_keep_search_exact_on_the_real_model(tmp_path, store_url):
    deployment = ingested(tmp_path, store_url, EmbedderResource())
    vault = vault_of(deployment)

    def found(query: str) -> tuple[str, str]:
        [best] = deployment.search(query, k=1)
        return best.path, best.text

    queries = {"how do I make marmalade": "orchard.md", "an invoice that was paid twice": "ledger.txt"}
    expected = {query: (path, DOCUMENTS[path]) for query, path in queries.items()}
    assert {query: found(query) for query in queries} == expected
    rows = vault.versions_in_use()[1]
    assert vault.rotate(force=True).version == 2
    assert {query: found(query) for query in queries} == expected  # version 1 tokens still open
    deployment.drop("whales.txt", WHALES)
    deployment.sync()
    # The new document's one chunk: its text (the whole document's) and its context (title and heading).
    assert vault.versions_in_use() == {1: rows, 2: 2}
    assert found("the songs of whales") == ("whales.txt", WHALES)
    assert sum(vault.rewrap_all(batch_size=2).values()) == rows
    assert vault.versions_in_use() == {2: rows + 2}
    assert {query: found(query) for query in queries} == expected
    vault.rotate(force=True)
    vault.rewrap_all()
    vault.destroy(1, now=datetime.now(UTC) + LATER)
    assert set(vault.versions_in_use()) == {3}
    assert {query: found(query) for query in queries} == expected
    assert all(token_version(value) == 3 for value in raw_texts(deployment.store))


def test_a_store_without_a_vault_refuses_text_and_does_everything_else(store_url):
    store = Store(store_url)
    store.ledger.record_scan("docs", [ObservedFile("a.txt", 10, 1, "h1")], [], [], [], shards=1)
    [row] = unprocessed_documents(store, 0, 1)
    for attempt in (
        lambda: set_document_text(store, row.id, "h1", "secret words"),
        lambda: replace_chunks(store, row.id, "h1", [NewChunk(0, "h", "secret words", 3)], "s"),
        lambda: store.texts.documents_to_chunk(0, 1, "s"),
        lambda: store.texts.chunk_hits([1]),
    ):
        with pytest.raises(TextNeedsKeys, match="stored only encrypted"):
            attempt()
    assert raw_texts(store) == []
    assert store.documents.shard_counts(0, 1)["documents_pending"] == 1


def test_a_missing_or_wrong_kek_is_refused_naming_where_it_was_looked_for(tmp_path, store_url, monkeypatch):
    monkeypatch.delenv("GRACE_TEST_NO_KEK", raising=False)
    missing = StoreResource(url=store_url, kek="env:GRACE_TEST_NO_KEK")
    fresh = missing.get()  # nothing is sealed yet: the store opens, and its first text needs the KEK
    assert fresh.documents.shard_counts(0, 1)["chunks"] == 0
    with pytest.raises(SecretError, match="no key in environment variable GRACE_TEST_NO_KEK"):
        set_document_text(fresh, "nobody", "h", "words")
    right, wrong = create_key_file(tmp_path / "right.key"), create_key_file(tmp_path / "wrong.key")
    set_document_text(StoreResource(url=store_url, kek=f"file:{right}").get(), "nobody", "h", "seals version 1")
    with pytest.raises(SecretError, match="no key in environment variable GRACE_TEST_NO_KEK"):
        missing.get()  # now that text may be sealed, the store does not open without its KEK
    with pytest.raises(WrongKek, match=f"the KEK from key file {wrong}"):
        StoreResource(url=store_url, kek=f"file:{wrong}").get()
    (tmp_path / "loose.key").write_bytes(right.read_bytes())
    (tmp_path / "loose.key").chmod(0o644)
    with pytest.raises(SecretError, match="mode 0644"):
        StoreResource(url=store_url, kek=f"file:{tmp_path / 'loose.key'}").get()


LEGACY = {"documents": "legacy document words", "chunks": ["legacy chunk one", "legacy chunk two", "legacy three"]}

SEAL_IN_CHILD = """
import sys
from grace.resources.wiring.dagster_resources import StoreResource
StoreResource(url=sys.argv[1], kek="env:GRACE_TEST_KEK", rewrap_batch=1).get()
"""


def write_release_0_3_rows(store_url: str) -> str:
    """A document, its chunks and a staged chunk, with text in plaintext as release 0.3 stored it."""
    store = Store(store_url)
    store.ledger.record_scan("docs", [ObservedFile("old.txt", 10, 1, "h-old")], [], [], [], shards=1)
    document_id = store.ledger.documents_of("docs")["old.txt"].id
    staged = dict(document_id=document_id, ordinal=0, chunk_hash="h-staged", text="legacy staged text")
    with store.writer.begin() as connection:
        connection.execute(
            update(documents)
            .where(documents.c.id == document_id)
            .values(text=LEGACY["documents"], processed_hash="h-old", status="active")
        )
        connection.execute(
            insert(chunks),
            [
                dict(document_id=document_id, ordinal=i, chunk_hash=f"h{i}", text=text, token_count=3)
                for i, text in enumerate(LEGACY["chunks"])
            ],
        )
        connection.execute(insert(staged_chunks), [dict(staged, token_count=3, text_hash="h-old", settings="s")])
    store.dispose()
    return document_id


def test_release_0_3_plaintext_is_sealed_on_first_open_resumably(store_url, monkeypatch):
    document_id = write_release_0_3_rows(store_url)
    kek = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("GRACE_TEST_KEK", kek)
    environment = {**os.environ, "GRACE_FAILPOINT": "rewrap.after_batch"}
    killed = subprocess.run(
        [sys.executable, "-c", SEAL_IN_CHILD, store_url], cwd=ROOT, env=environment, capture_output=True, timeout=120
    )
    assert killed.returncode == -9, killed.stderr
    halfway = raw_texts(Store(store_url))
    assert sum(token_version(value) == 1 for value in halfway) == 1 and len(halfway) == 5
    store = StoreResource(url=store_url, kek="env:GRACE_TEST_KEK", rewrap_batch=1).get()
    assert all(token_version(value) == 1 for value in raw_texts(store))
    hits = store.texts.chunk_hits(list(range(1, 10)))
    assert sorted(hit.text for hit in hits.values()) == sorted(LEGACY["chunks"])
    [[legacy]] = store.texts.documents_to_chunk(0, 1, "s")
    assert (legacy.document_id, legacy.text_hash, legacy.text) == (document_id, "h-old", LEGACY["documents"])
    staged_token = raw_texts(store)[-1]
    assert store.vault.decrypt(staged_token, CHUNK_TEXT.aad((document_id, "h-staged"))) == "legacy staged text"
    sealed = [entry.detail["rows"] for entry in store.vault.audit_entries() if entry.event == KeyEvent.REWRAP_PROGRESS]
    assert sum(sealed) == 5
    if store_url.startswith("sqlite"):  # the plaintext the tokens replaced is not left in freed pages either
        assert b"legacy" not in sqlite_bytes(store_url)

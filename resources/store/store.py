"""The Grace store: documents, chunks and embeddings in SQLite or PostgreSQL, one SQLAlchemy code path.

The Store is made of parts, each an attribute with a file of its own, which use one another only
through their public methods:

- store.layout (layout.py): the shard each row belongs to, and the layout epoch;
- store.ledger (ledger.py): what the sensors know of the files on disk, and their change events;
- store.holds (held_deletes.py): deletes a scan held back, and why;
- store.texts (texts.py): text sealed by the key vault, and the text the chunks and embeddings steps read;
- store.documents (documents.py): the documents step's reads and writes, and document counts;
- store.chunks (chunks.py): live and staged chunks, and publishing a stage;
- store.lexical (lexical.py): the lexical index's postings, written with the chunks, and BM25 over them;
- store.embeddings (embeddings.py): the vectors, and the sweeps of those no chunk needs;
- store.index_delta (index_delta.py): what changed in a shard since its index was built;
- store.serving (serving_model.py): which model's vectors search answers from;
- store.tasks (taskbook.py): routed tasks.

Document and chunk text is stored only encrypted, sealed by the store's key vault (see
resources/keys/vault.py); everything else is stored as it is.
"""

from __future__ import annotations

import copy

from grace.core.process_caches import SEALING_STORES, STORES
from grace.core.secrets import SecretError
from grace.resources.db.key_tables import holds_key_versions
from grace.resources.db.migrations import ensure_head
from grace.resources.db.schema import make_engine, writer_of
from grace.resources.keys.vault import REWRAP_BATCH, KeyVault, shared_vault
from grace.resources.store.chunks import Chunks
from grace.resources.store.documents import Documents
from grace.resources.store.embeddings import Embeddings
from grace.resources.store.held_deletes import DeleteHolds
from grace.resources.store.index_delta import IndexDelta
from grace.resources.store.layout import ShardLayout
from grace.resources.store.ledger import Ledger
from grace.resources.store.lexical import LexicalIndex
from grace.resources.store.serving_model import ServingModel
from grace.resources.store.taskbook import TaskBook
from grace.resources.store.texts import SealedText, seal_plaintext_once


class Store:
    """All of Grace's durable state behind one SQLAlchemy engine, in parts (see the module's docstring).

    Text is sealed and opened by vault, with each row's binding as associated data. A store
    without a vault does everything else (scans, leases, tasks, stats, vectors) but refuses to
    write or read text, so the product never stores plaintext.
    """

    keys_missing: str | None = None  # why the KEK could not be had, when the store opened without it

    def __init__(self, url: str, vault: KeyVault | None = None):
        self.url = url
        self.engine = make_engine(url)
        self.writer = writer_of(self.engine)
        ensure_head(self.engine, url)
        self.tasks = TaskBook(self.engine)
        self.vault = vault
        self._assemble()

    def _assemble(self) -> None:
        """Make the parts over this store's engine and vault."""
        engine, writer = self.engine, self.writer
        self.layout = ShardLayout(engine, writer)
        self.ledger = Ledger(engine, writer, self.layout)
        self.holds = DeleteHolds(engine, writer)
        self.texts = SealedText(engine, writer, self.layout, self.vault, self.keys_missing)
        self.documents = Documents(engine, writer, self.layout, self.texts)
        self.lexical = LexicalIndex(engine, writer, self.layout, self.texts)
        self.chunks = Chunks(engine, writer, self.layout, self.texts, self.lexical)
        self.embeddings = Embeddings(engine, writer)
        self.index_delta = IndexDelta(engine, writer, self.layout)
        self.serving = ServingModel(engine, writer)

    def with_vault(self, vault: KeyVault) -> Store:
        """This store, on the same engine, sealing and opening text with vault."""
        sealing = copy.copy(self)
        sealing.vault = vault
        sealing._assemble()
        return sealing

    def lacking_keys(self, why: str) -> Store:
        """This store, on the same engine, refusing text with why (a SecretError's message)."""
        lacking = copy.copy(self)
        lacking.keys_missing = why
        lacking._assemble()
        return lacking

    def dispose(self) -> None:
        self.engine.dispose()


def shared_store(url: str) -> Store:
    """One Store (and connection pool) per process and URL (STORES); without a vault, it refuses text."""
    return STORES.get_or_make(url, lambda: Store(url))


def open_store(
    url: str,
    kek: str | None = None,
    rotate_every_seconds: int = 30 * 86400,
    min_decryption_versions: int = 2,
    rewrap_batch: int = REWRAP_BATCH,
    run_id: str | None = None,
) -> Store:
    """The process's store for url; with kek (env:NAME or file:PATH), text is sealed by the key vault.

    The KEK is resolved here. Once the store holds key versions, a missing or wrong KEK raises,
    naming where it was looked for; a store with none yet opens without it (scans, stats and empty
    searches need none) and the same error comes from the first text it seals. The first open in a
    process also encrypts any text stored before encryption (release 0.3), in resumable batches.
    Without kek, the store does everything but text (sensors, leases, tasks).
    """
    store = shared_store(url)
    if kek is None:
        return store
    try:
        vault = shared_vault(url, kek, rotate_every_seconds, min_decryption_versions)
    except SecretError as missing:
        with store.engine.connect() as connection:
            if holds_key_versions(connection):
                raise
        return store.lacking_keys(str(missing))
    seal_plaintext_once(vault, rewrap_batch)
    return _store_for_run(store, vault, run_id)


def _store_for_run(store: Store, vault: KeyVault, run_id: str | None) -> Store:
    """A sealing store whose audit entries name the run, sharing the engine and data keys. Outside a run
    (sensors, CLI, API) it is the process's one (SEALING_STORES); a run's own is made here and kept by
    StoreResource for its execution, so no cache grows with the runs a process has seen."""
    if run_id is None:
        return SEALING_STORES.get_or_make((store, vault), lambda: store.with_vault(vault.for_run(None)))
    return store.with_vault(vault.for_run(run_id))

"""Do the store and the index files agree? Corruption, orphan vectors and missing ones."""

from dataclasses import dataclass, field

import numpy as np

from grace.resources.index.shard_state import shard_view, usable
from grace.resources.index.vector_index import IndexCorrupt, LoadedIndex, ShardedIndex
from grace.resources.store.store import Store

VECTOR_TOLERANCE = 1e-5
VECTORS_COMPARED = 2000  # per shard, spread over the index; the checksum already covers every byte


@dataclass
class ShardConsistency:
    shard: int
    problems: list[str] = field(default_factory=list)  # corruption or disagreement: must be repaired
    orphans: int = 0  # vectors in the index whose chunk is gone from the store
    missing: int = 0  # searchable embeddings the index does not hold yet
    vectors_compared: int = 0
    lexical_missing: int = 0  # live chunks cut before the lexical index, which the next rebuild indexes
    postings_compared: int = 0

    @property
    def stale(self) -> bool:
        """Behind the store, which the next rebuild fixes: not a failure."""
        return self.orphans > 0 or self.missing > 0 or self.lexical_missing > 0


def check_shard(store: Store, index: ShardedIndex, shard: int, model_id: str) -> ShardConsistency:
    """Verify a shard's files (checksum, counts, model), count orphan and missing vectors with a pass
    over the shard, check that the change log search relies on agrees with that pass, and compare
    indexed vectors with the store's (all of them, up to VECTORS_COMPARED)."""
    report = ShardConsistency(shard)
    _check_lexical(store, index.shards, report)
    searchable = store.index_delta.embedded_chunk_ids(shard, index.shards, model_id)
    try:
        loaded = index.verify(shard)
    except IndexCorrupt as error:
        report.problems.append(str(error))
        report.missing = len(searchable)
        return report
    if loaded is None:
        report.missing = len(searchable)
        return report
    if loaded.meta.model_id != model_id:
        report.problems.append(f"shard {shard}: index built with {loaded.meta.model_id}, store embeds with {model_id}")
        report.missing = len(searchable)
        return report
    report.orphans = len(np.setdiff1d(loaded.chunk_ids, searchable))
    report.missing = len(np.setdiff1d(searchable, loaded.chunk_ids))
    if usable(loaded.meta, model_id, store.layout.epoch(index.shards)):
        disagreement = _change_log_disagreement(store, index, shard, model_id, loaded, searchable)
        if disagreement:
            report.problems.append(f"shard {shard}: {disagreement}")
    both = np.intersect1d(loaded.chunk_ids, searchable)
    if len(both) > VECTORS_COMPARED:
        both = both[np.linspace(0, len(both) - 1, VECTORS_COMPARED).astype(np.int64)]
    ids, expected = store.embeddings.vectors_of(both, model_id)
    if len(ids) and loaded.annoy is not None:
        position_of = {int(chunk_id): position for position, chunk_id in enumerate(loaded.chunk_ids)}
        stored = np.array([loaded.annoy.get_item_vector(position_of[int(i)]) for i in ids], dtype=np.float32)
        wrong = np.flatnonzero(np.abs(stored - expected).max(axis=1) > VECTOR_TOLERANCE)
        if len(wrong):
            first = int(ids[wrong[0]])
            report.problems.append(f"shard {shard}: {len(wrong)} vectors differ from the store (first {first})")
        report.vectors_compared = len(ids)
    return report


def _check_lexical(store: Store, shards: int, report: ShardConsistency) -> None:
    """Count the shard's live chunks without postings, and recompute a spread of the others' from their text."""
    report.lexical_missing = store.lexical.missing(report.shard, shards)
    compared, wrong = store.lexical.disagreements(report.shard, shards)
    report.postings_compared = compared
    if wrong:
        report.problems.append(
            f"shard {report.shard}: the lexical postings of {len(wrong)} chunks differ from their text "
            f"(first {wrong[0]}): the shard's next rebuild_index run rewrites them"
        )


def _change_log_disagreement(
    store: Store, index: ShardedIndex, shard: int, model_id: str, loaded: LoadedIndex, searchable: np.ndarray
) -> str | None:
    """Whether search's view of the shard (index + change log) differs from a pass over it.

    A sensor may record a change between the two reads, so a difference is read again before
    it is reported.
    """
    for _attempt in range(3):
        view = shard_view(store, index, shard, model_id)
        expected_pending = np.setdiff1d(searchable, loaded.chunk_ids)
        expected_tombstoned = np.setdiff1d(loaded.chunk_ids, searchable)
        if np.array_equal(view.pending, expected_pending) and np.array_equal(view.tombstoned, expected_tombstoned):
            return None
        searchable = store.index_delta.embedded_chunk_ids(shard, index.shards, model_id)
    return (
        f"the change log shows {len(view.pending)} pending and {len(view.tombstoned)} tombstoned chunks, a pass "
        f"over the shard {len(expected_pending)} and {len(expected_tombstoned)}: rebuild the shard"
    )

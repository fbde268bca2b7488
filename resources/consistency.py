"""Do the store and the index files agree? Corruption, orphan vectors and missing ones."""

from dataclasses import dataclass, field

import numpy as np

from grace.resources.store import Store
from grace.resources.vector_index import IndexCorrupt, ShardedIndex

VECTOR_TOLERANCE = 1e-5
VECTORS_COMPARED = 2000  # per shard, spread over the index; the checksum already covers every byte


@dataclass
class ShardConsistency:
    shard: int
    problems: list[str] = field(default_factory=list)  # corruption or disagreement: must be repaired
    orphans: int = 0  # vectors in the index whose chunk is gone from the store
    missing: int = 0  # searchable embeddings the index does not hold yet
    vectors_compared: int = 0

    @property
    def exact(self) -> bool:
        return not self.problems and self.orphans == 0 and self.missing == 0


def check_shard(
    store: Store, index: ShardedIndex, shard: int, searchable: np.ndarray, model_id: str
) -> ShardConsistency:
    """Verify a shard's files (checksum, counts, model), count orphan and missing vectors exactly,
    and compare indexed vectors with the store's (all of them, up to VECTORS_COMPARED)."""
    report = ShardConsistency(shard)
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
    both = np.intersect1d(loaded.chunk_ids, searchable)
    if len(both) > VECTORS_COMPARED:
        both = both[np.linspace(0, len(both) - 1, VECTORS_COMPARED).astype(np.int64)]
    ids, expected = store.vectors_of(both, model_id)
    if len(ids) and loaded.annoy is not None:
        position_of = {int(chunk_id): position for position, chunk_id in enumerate(loaded.chunk_ids)}
        stored = np.array([loaded.annoy.get_item_vector(position_of[int(i)]) for i in ids], dtype=np.float32)
        wrong = np.flatnonzero(np.abs(stored - expected).max(axis=1) > VECTOR_TOLERANCE)
        if len(wrong):
            first = int(ids[wrong[0]])
            report.problems.append(f"shard {shard}: {len(wrong)} vectors differ from the store (first {first})")
        report.vectors_compared = len(ids)
    return report

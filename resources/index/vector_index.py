"""Sharded Annoy indexes, each rebuilt into new files and swapped in atomically."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from grace.core.failpoints import failpoint
from grace.core.index_config import EXACT_SEARCH_MAX_ITEMS
from grace.core.process_caches import OPEN_INDEX_VERSIONS
from grace.resources.files.stamps import file_sha256, stamped_sha256

POINTER = "current.json"
KEEP_VERSIONS = 2  # the current one, and the one a reader may still be opening
# EXACT_SEARCH_MAX_ITEMS: a shard of at most this many vectors is searched exactly, from a float32 copy
# of its vectors beside the Annoy file. At 50k vectors of 384 dimensions a product over all of them costs
# what Annoy does at search_k 25,000 (5.1 against 5.0 ms), and Annoy's recall@10 on near-duplicates there
# is 0.982, below the 0.99 goal (bench/shard_search.py, docs/scale.md). Larger shards use Annoy alone.


@dataclass(frozen=True)
class IndexVersion:
    """What current.json says: one immutable built index of a shard."""

    version: str
    model_id: str
    dimension: int
    items: int
    index_file: str
    ids_file: str
    index_sha256: str
    built_at: float
    index_bytes: int | None = None  # absent from pointers written before sizes were recorded
    # What the build saw (see index_delta.py); absent from pointers of Grace 0.4 and older.
    high_water: int | None = None
    unsearchable_file: str | None = None
    layout_epoch: int | None = None
    # The unit vectors, by position, of a shard small enough to be searched exactly; absent otherwise
    # and from pointers of Grace 0.5 and older (those shards are searched by Annoy until rebuilt).
    vectors_file: str | None = None
    vectors_sha256: str | None = None


@dataclass(frozen=True)
class LoadedIndex:
    meta: IndexVersion
    annoy: AnnoyIndex | None  # None for an empty shard
    chunk_ids: np.ndarray  # position in the index -> chunk id, ascending
    unsearchable_at_build: np.ndarray  # ids at or below meta.high_water that were not searchable
    vectors: np.ndarray | None = None  # memory-mapped unit vectors by position, for exact search

    @property
    def exact(self) -> bool:
        return self.vectors is not None

    def nearest(self, query: np.ndarray, count: int, search_k: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, cosine similarities) of the count nearest items, best first.

        Exact over every vector when the shard keeps them; otherwise Annoy, with search_k raised to
        at least count * trees (Annoy's own default for count), since a budget below that returns
        fewer than count items from an index that holds more.
        """
        if self.annoy is None or count <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if self.vectors is not None:
            return self._exact_nearest(query, count)
        budget = max(search_k, count * self.annoy.get_n_trees())
        positions, distances = self.annoy.get_nns_by_vector(
            query.tolist(), count, search_k=budget, include_distances=True
        )
        # Annoy's angular distance is sqrt(2 - 2 cos).
        similarity = 1.0 - np.square(np.asarray(distances, dtype=np.float32)) / 2.0
        return self.chunk_ids[np.asarray(positions, dtype=np.int64)], similarity

    def _exact_nearest(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        unit = np.asarray(query, dtype=np.float32)
        unit = unit / max(float(np.linalg.norm(unit)), 1e-12)
        similarity = self.vectors @ unit
        if count < len(similarity):
            candidates = np.argpartition(-similarity, count - 1)[:count]
        else:
            candidates = np.arange(len(similarity))
        # Best first; equal scores by position, so the same query always ranks the same way.
        best = candidates[np.lexsort((candidates, -similarity[candidates]))]
        return self.chunk_ids[best], similarity[best].astype(np.float32)


class IndexCorrupt(RuntimeError):
    """A shard's files do not match what its pointer promises."""


class ShardedIndex:
    """One folder per shard under root/<shards>-shards/, each with a current.json pointer."""

    def __init__(
        self,
        root: Path,
        shards: int,
        trees: int = 50,
        search_k: int = 25000,
        exact_max_items: int = EXACT_SEARCH_MAX_ITEMS,
    ):
        self.root = Path(root) / f"{shards}-shards"
        self.shards = shards
        self.trees = trees
        self.search_k = search_k
        self.exact_max_items = exact_max_items  # shards up to this size are searched exactly

    @property
    def search_k_per_shard(self) -> int:
        """index.search_k is each shard's budget, not a share of one: divided by 4 shards, 6,250 nodes
        missed the one relevant file of a 446-vector shard of near-duplicates (docs/scale.md)."""
        return self.search_k

    def shard_dir(self, shard: int) -> Path:
        return self.root / f"shard-{shard:03d}"

    def current(self, shard: int) -> IndexVersion | None:
        try:
            return IndexVersion(**json.loads((self.shard_dir(shard) / POINTER).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as error:
            raise IndexCorrupt(f"shard {shard}: unreadable {POINTER}: {error}") from error

    def build(
        self,
        shard: int,
        chunk_ids: np.ndarray,
        vectors: np.ndarray,
        model_id: str,
        *,
        high_water: int | None = None,
        unsearchable: np.ndarray | None = None,
        layout_epoch: int | None = None,
    ) -> IndexVersion:
        """Build a new index version from scratch (chunk_ids ascending) and make it current in one rename.

        high_water, unsearchable and layout_epoch record what the store looked like (see
        index_delta.py); by default the highest id, nothing unsearchable and no layout.
        """
        if high_water is None:
            high_water = int(chunk_ids.max()) if len(chunk_ids) else 0
        if unsearchable is None:
            unsearchable = np.empty(0, dtype=np.int64)
        folder = self.shard_dir(shard)
        folder.mkdir(parents=True, exist_ok=True)
        version = f"{time.time_ns():020d}"
        index_file, ids_file = f"v{version}.ann", f"v{version}.ids.npy"
        unsearchable_file = f"v{version}.unsearchable.npy"
        dimension = int(vectors.shape[1]) if len(chunk_ids) else 0
        digest, size = "", 0
        if len(chunk_ids):
            annoy = AnnoyIndex(dimension, "angular")
            for position, vector in enumerate(vectors):
                annoy.add_item(position, vector.tolist())
            annoy.build(self.trees, n_jobs=1)
            _write_atomically(folder / index_file, lambda tmp: annoy.save(str(tmp)))
            annoy.unload()
            digest, size = file_sha256(folder / index_file), (folder / index_file).stat().st_size
        vectors_file = vectors_sha256 = None
        if 0 < len(chunk_ids) <= self.exact_max_items:
            vectors_file = f"v{version}.vectors.npy"
            _write_atomically(folder / vectors_file, lambda tmp: _save_unit_vectors(tmp, vectors))
            vectors_sha256 = file_sha256(folder / vectors_file)
        _write_atomically(folder / ids_file, lambda tmp: _save_ids(tmp, chunk_ids))
        _write_atomically(folder / unsearchable_file, lambda tmp: _save_ids(tmp, unsearchable))
        meta = IndexVersion(
            version=version,
            model_id=model_id,
            dimension=dimension,
            items=int(len(chunk_ids)),
            index_file=index_file,
            ids_file=ids_file,
            index_sha256=digest,
            built_at=time.time(),
            index_bytes=size,
            high_water=int(high_water),
            unsearchable_file=unsearchable_file,
            layout_epoch=layout_epoch,
            vectors_file=vectors_file,
            vectors_sha256=vectors_sha256,
        )
        failpoint("index.before_swap")
        _write_atomically(folder / POINTER, lambda tmp: tmp.write_text(json.dumps(meta.__dict__, indent=1)))
        failpoint("index.after_swap")
        self._remove_old_versions(folder)
        return meta

    def load(self, shard: int) -> LoadedIndex | None:
        """The current index of a shard (memory-mapped), or None if none was built.

        Its size and checksum are verified before Annoy maps it (Annoy trusts the file and
        crashes the process on a damaged one), once per process for each version and file state.
        """
        folder = self.shard_dir(shard)
        for _attempt in range(3):
            meta = self.current(shard)
            if meta is None:
                return None
            try:
                state = os.stat(folder / meta.index_file) if meta.items else None
                file_state = (state.st_size, state.st_mtime_ns, state.st_ino) if state else None
                return _load_version(str(folder), meta, file_state)
            except FileNotFoundError:
                continue  # swapped and cleaned up between reading the pointer and opening
            except (IndexCorrupt, OSError, ValueError) as error:
                raise IndexCorrupt(f"shard {shard}: {error}") from error
        raise IndexCorrupt(f"shard {shard}: files named by {self.shard_dir(shard) / POINTER} are missing")

    def verify(self, shard: int) -> LoadedIndex | None:
        """Like load, but re-reads and re-hashes the files now, trusting no cache or stamp."""
        meta = self.current(shard)
        if meta is None:
            return None
        try:
            return _open_version(str(self.shard_dir(shard)), meta, trust_stamp=False)
        except (IndexCorrupt, OSError, ValueError) as error:
            raise IndexCorrupt(f"shard {shard}: {error}") from error

    def _remove_old_versions(self, folder: Path) -> None:
        versions = sorted({path.name.split(".")[0] for path in folder.glob("v*.ids.npy")})
        for stale in versions[:-KEEP_VERSIONS]:
            for path in folder.glob(f"{stale}.*"):
                path.unlink(missing_ok=True)
        for leftover in folder.glob("*.tmp*"):
            try:  # a reader's stamp may be renamed into place meanwhile
                abandoned = time.time() - leftover.stat().st_mtime > 3600
            except FileNotFoundError:
                continue
            if abandoned:
                leftover.unlink(missing_ok=True)


def _open_version(folder: str, meta: IndexVersion, trust_stamp: bool = True) -> LoadedIndex:
    """Check a version's files against its pointer (size, checksum, item counts), then map it."""
    chunk_ids = np.load(Path(folder) / meta.ids_file)
    unsearchable = np.load(Path(folder) / meta.unsearchable_file) if meta.unsearchable_file else np.empty(0, np.int64)
    if len(chunk_ids) != meta.items:
        raise IndexCorrupt(f"{meta.ids_file} holds {len(chunk_ids)} ids, the pointer says {meta.items}")
    annoy = None
    if meta.items:
        path = Path(folder) / meta.index_file
        size = path.stat().st_size
        if meta.index_bytes is not None and size != meta.index_bytes:
            raise IndexCorrupt(f"{meta.index_file} is {size} bytes, it was built with {meta.index_bytes}")
        _check_sha256(path, meta, trust_stamp)
        annoy = AnnoyIndex(meta.dimension, "angular")
        try:
            annoy.load(str(path))
        except OSError:
            if not path.exists():
                raise FileNotFoundError(path) from None  # cleaned up by a newer build: retry
            raise
        if annoy.get_n_items() != meta.items:
            raise IndexCorrupt(f"{meta.index_file} holds {annoy.get_n_items()} items, the pointer says {meta.items}")
    return LoadedIndex(meta, annoy, chunk_ids, unsearchable, _open_vectors(folder, meta, trust_stamp))


def _open_vectors(folder: str, meta: IndexVersion, trust_stamp: bool) -> np.ndarray | None:
    """The shard's unit vectors, memory-mapped, once their checksum and shape match the pointer."""
    if not meta.vectors_file or not meta.items:
        return None
    path = Path(folder) / meta.vectors_file
    stamp = path.with_name(path.name.split(".")[0] + ".vectors.verified")
    if stamped_sha256(path, stamp, trust=trust_stamp) != meta.vectors_sha256:
        raise IndexCorrupt(f"{meta.vectors_file} does not match its checksum")
    vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    if vectors.dtype != np.float32 or vectors.shape != (meta.items, meta.dimension):
        raise IndexCorrupt(f"{meta.vectors_file} holds {vectors.dtype} {vectors.shape}, not {meta.items} vectors")
    return vectors


def _check_sha256(path: Path, meta: IndexVersion, trust_stamp: bool) -> None:
    """Raise IndexCorrupt unless the file matches the pointer's checksum; a stamp beside it
    (v<version>.verified, see file_stamps) spares later processes the full hash."""
    stamp = path.with_name(path.name.split(".")[0] + ".verified")
    if stamped_sha256(path, stamp, trust=trust_stamp) != meta.index_sha256:
        raise IndexCorrupt(f"{meta.index_file} does not match its checksum")


def _load_version(folder: str, meta: IndexVersion, file_state: tuple[int, int, int] | None) -> LoadedIndex:
    """The shard's verified, mapped version, cached one per folder (OPEN_INDEX_VERSIONS).

    Versions are immutable, so a verified one is reused; file_state (size, mtime, inode) is part
    of the key so that a file damaged after it was verified is verified again, not trusted. Only
    the newest version stays cached: a superseded one is unmapped once no search still holds it,
    so the disk space of its deleted files returns.
    """
    key = (meta, file_state)
    cached = OPEN_INDEX_VERSIONS.get(folder)
    if cached is not None and cached[0] == key:
        return cached[1]
    loaded = _open_version(folder, meta)  # outside the lock: searches of other shards need not wait on the hash
    OPEN_INDEX_VERSIONS.put(folder, (key, loaded))
    return loaded


def _save_ids(path: Path, chunk_ids: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.asarray(chunk_ids, dtype=np.int64))


def _save_unit_vectors(path: Path, vectors: np.ndarray) -> None:
    unit = np.asarray(vectors, dtype=np.float32)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    with open(path, "wb") as handle:
        np.save(handle, unit)


def _write_atomically(final: Path, write) -> None:
    """Write through a temporary file, fsync, then rename: readers see old or new, never half."""
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

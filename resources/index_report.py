"""index_status: the whole corpus at a glance, as Dagster metadata and checks.

Totals and the per-shard table come from index_stats (the store tables and the index files, the
same numbers as `grace stats`); orphan vectors are those the rebuild's sweep would delete now.
The index_freshness sensor reports it without a run; its checks can also be executed from the UI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dagster import (
    AssetCheckSeverity,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)
from sqlalchemy import case, func, select

from grace.resources.embedding_gc import UNREFERENCED_GRACE, _orphaned
from grace.resources.schema import embeddings, utc_now
from grace.resources.search import index_stats
from grace.resources.store import Store
from grace.resources.vector_index import ShardedIndex

INDEX_STATUS = "index_status"
ORPHAN_CHECK = "no_orphan_vectors"

# Whole-corpus numbers: the same keys on every report, so the UI plots each one over time.
TOTAL_KEYS = (
    "total_embeddings",
    "indexed_embeddings",
    "pending",
    "tombstoned",
    "documents_active",
    "documents_pending",
    "documents_quarantined",
    "documents_deleted",
    "chunks",
)
SHARD_COLUMNS = (
    ("shard", "int", "static partition: hash(document id) % index.shards"),
    ("embeddings", "int", "searchable chunks with a vector"),
    ("indexed", "int", "of those, in the shard's Annoy index"),
    ("pending", "int", "searchable, not in the index yet (scanned exactly by search)"),
    ("tombstoned", "int", "in the index, no longer searchable (filtered out)"),
    ("coverage", "float", "indexed / embeddings"),
    ("stale_fraction", "float", "(pending + tombstoned) / (embeddings + tombstoned); rebuilt past the threshold"),
    ("documents_active", "int", "documents searchable in the shard"),
    ("documents_quarantined", "int", "documents refused with a reason"),
    ("chunks", "int", "chunks of active documents"),
    ("index_version", "string", "the Annoy version searches use"),
    ("index_problem", "string", "why the shard's index files are unusable, if they are"),
)


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    severity: AssetCheckSeverity
    description: str
    metadata: dict


@dataclass(frozen=True)
class IndexReport:
    """Whole-corpus stats (index_stats' dict), and the orphan vectors among every stored vector."""

    stats: dict
    orphan_vectors: int
    stored_vectors: int

    def metadata(self) -> dict:
        total, shards = self.stats["total"], self.stats["shards"]
        reembedding = self.stats["reembedding"]
        return {
            **{key: MetadataValue.int(int(total[key])) for key in TOTAL_KEYS},
            "index_coverage": MetadataValue.float(float(total["index_coverage"])),
            "stale_fraction": MetadataValue.float(round(float(total["stale_fraction"]), 6)),
            "orphan_vectors": MetadataValue.int(self.orphan_vectors),
            "stored_vectors": MetadataValue.int(self.stored_vectors),
            "damaged_shards": MetadataValue.int(sum(row["index_problem"] is not None for row in shards)),
            "reembedding_chunks_left": MetadataValue.int(reembedding["chunks_left"] if reembedding else 0),
            "serving_model_id": MetadataValue.text(self.stats["model_id"]),
            "shards": MetadataValue.table(
                [TableRecord(_shard_record(row)) for row in shards],
                schema=TableSchema(
                    columns=[TableColumn(name, kind, description) for name, kind, description in SHARD_COLUMNS]
                ),
            ),
        }

    def checks(self, orphan_share_allowed: float) -> list[CheckOutcome]:
        """no_orphan_vectors: the sweep keeps up. Each rebuild_index run sweeps its share of the vectors, and
        index_freshness requests one once a shard is orphan_share_allowed stale, so more orphans than that
        share of the stored vectors means sweeps are not running (rebuild_every_shard stopped, or failing)."""
        allowed = int(orphan_share_allowed * self.stored_vectors)
        passed = self.orphan_vectors <= allowed
        description = (
            f"{self.orphan_vectors} of {self.stored_vectors} stored vectors belong to no chunk (at most {allowed} "
            "allowed): "
            + (
                "the rebuild_index runs' sweep keeps up"
                if passed
                else "no rebuild_index run has swept them; check that rebuild_every_shard is running and its runs "
                "succeed, or launch rebuild_index for every shard"
            )
        )
        return [
            CheckOutcome(
                ORPHAN_CHECK,
                passed,
                AssetCheckSeverity.WARN,
                description,
                {
                    "orphan_vectors": MetadataValue.int(self.orphan_vectors),
                    "stored_vectors": MetadataValue.int(self.stored_vectors),
                    "orphans_allowed": MetadataValue.int(allowed),
                },
            )
        ]


def index_report(store: Store, index: ShardedIndex, target_model_id: str, now: datetime | None = None) -> IndexReport:
    orphans, stored = count_orphan_vectors(store, now)
    return IndexReport(index_stats(store, index, target_model_id), orphans, stored)


def count_orphan_vectors(store: Store, now: datetime | None = None) -> tuple[int, int]:
    """(vectors of any model that no live or staged chunk has the text of and the sweep would delete now,
    every stored vector), in one read: an index probe per vector, no text and no vectors loaded."""
    cutoff = (now or utc_now()) - UNREFERENCED_GRACE
    query = select(
        func.coalesce(func.sum(case((_orphaned(cutoff), 1), else_=0)), 0).label("orphans"),
        func.count().label("stored"),
    ).select_from(embeddings)
    with store.engine.connect() as connection:
        row = connection.execute(query).one()
    return int(row.orphans), int(row.stored)


def _shard_record(row: dict) -> dict:
    return {
        "shard": row["shard"],
        "embeddings": row["total_embeddings"],
        "indexed": row["indexed_embeddings"],
        "pending": row["pending"],
        "tombstoned": row["tombstoned"],
        "coverage": round(float(row["index_coverage"]), 6),
        "stale_fraction": round(float(row["stale_fraction"]), 6),
        "documents_active": row["documents_active"],
        "documents_quarantined": row["documents_quarantined"],
        "chunks": row["chunks"],
        "index_version": row["index_version"] or "none",
        "index_problem": row["index_problem"] or "",
    }

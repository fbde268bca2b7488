"""index_status: the whole corpus at a glance, as Dagster metadata and checks.

Totals and the per-shard table come from index_stats (the store tables and the index files, the
same numbers as `grace stats`); orphan vectors are those the rebuild's sweep would delete now; files
not read are those of the watched folders that match no pattern, as each source's last full scan
counted them (in the words of `grace stats` and `grace status`).
The index_freshness sensor reports it without a run; its checks can also be executed from the UI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dagster import (
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from grace.resources.index.search import index_stats
from grace.resources.index.vector_index import ShardedIndex
from grace.resources.store.not_read import describe_not_read
from grace.resources.store.store import Store

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

    def fields(self) -> dict:
        """The check's keyword arguments, the same for both ways Dagster is told of it: a run of
        check_index_status yields AssetCheckResult(**fields), index_freshness records AssetCheckEvaluation(**fields)."""
        return {
            "asset_key": AssetKey(INDEX_STATUS),
            "check_name": self.name,
            "passed": self.passed,
            "severity": self.severity,
            "description": self.description,
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class IndexReport:
    """Whole-corpus stats (index_stats' dict), the orphan vectors among every stored vector, and the files
    not read per source and suffix (store.ledger.not_read)."""

    stats: dict
    orphan_vectors: int
    stored_vectors: int
    not_read: dict[str, dict[str, int]]

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
            "files_not_read": MetadataValue.int(sum(sum(counts.values()) for counts in self.not_read.values())),
            "not_read": MetadataValue.text(
                "\n".join(f"{source}: {text}" for source, text in describe_not_read(self.not_read).items())
                or "none: every file the last full scans found matches a pattern or an exclude"
            ),
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
    orphans, stored = store.embeddings.count_orphans(now)
    return IndexReport(index_stats(store, index, target_model_id), orphans, stored, store.ledger.not_read())


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

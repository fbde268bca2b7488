"""The store as release 0.1.0 created it with metadata.create_all.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("document_id", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_changes_source_id", "changes", ["source", "id"])
    op.create_table(
        "documents",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("shard_key", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("disk_hash", sa.String(64), nullable=False),
        sa.Column("processed_hash", sa.String(64)),
        sa.Column("chunked_hash", sa.String(64)),
        sa.Column("chunk_settings", sa.String(128)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("text", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("source", "path", name="uq_documents_source_path"),
    )
    op.create_index("ix_documents_shard_key", "documents", ["shard_key"])
    op.create_table(
        "embeddings",
        sa.Column("model_id", sa.String(128), primary_key=True),
        sa.Column("chunk_hash", sa.String(64), primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "chunks",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("document_id", sa.String(32), sa.ForeignKey("documents.id"), nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("chunk_hash", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_chunks_chunk_hash", "chunks", ["chunk_hash"])
    op.create_index("ix_chunks_document_id", "chunks", ["document_id"])


def downgrade() -> None:
    for table in ("chunks", "embeddings", "documents", "changes"):
        op.drop_table(table)

"""Release 0.2.0: shard leases, run heartbeats, staged chunks, one chunk per (document, ordinal).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shard_leases",
        sa.Column("shard", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "run_heartbeats",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "staged_chunks",
        sa.Column("document_id", sa.String(32), sa.ForeignKey("documents.id"), primary_key=True),
        sa.Column("ordinal", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("chunk_hash", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("settings", sa.String(128), nullable=False),
    )
    op.create_index("ix_staged_chunks_chunk_hash", "staged_chunks", ["chunk_hash"])
    _rechunk_documents_with_duplicate_ordinals()
    bind = op.get_bind()
    next_chunk_id = _sqlite_sequence(bind)
    with op.batch_alter_table("chunks", table_kwargs={"sqlite_autoincrement": True}) as chunks:
        chunks.create_unique_constraint("uq_chunks_document_ordinal", ["document_id", "ordinal"])
    if next_chunk_id is not None:
        # SQLite rebuilt the table, and with it the id counter from the highest id left:
        # restore it, since a built index may still name a deleted chunk's higher id.
        bind.exec_driver_sql("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'chunks'", (next_chunk_id,))


def downgrade() -> None:
    with op.batch_alter_table("chunks", table_kwargs={"sqlite_autoincrement": True}) as chunks:
        chunks.drop_constraint("uq_chunks_document_ordinal", type_="unique")
    op.drop_index("ix_staged_chunks_chunk_hash", "staged_chunks")
    for table in ("staged_chunks", "run_heartbeats", "shard_leases"):
        op.drop_table(table)


def _rechunk_documents_with_duplicate_ordinals() -> None:
    # Two 0.1.0 runs racing on one document could leave doubled ordinals, which the new
    # constraint refuses: drop those chunks and let the next run cut the document again.
    doubled = "SELECT document_id FROM chunks GROUP BY document_id, ordinal HAVING COUNT(*) > 1"
    op.execute(f"UPDATE documents SET chunked_hash = NULL WHERE id IN ({doubled})")
    op.execute(f"DELETE FROM chunks WHERE document_id IN ({doubled})")


def _sqlite_sequence(bind) -> int | None:
    if bind.dialect.name != "sqlite":
        return None
    return bind.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").scalar()

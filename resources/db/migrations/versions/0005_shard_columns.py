"""Release 0.5.0: stored shard columns, the removed-chunks log, the shard layout and store settings.

Revision ID: 0005
Revises: 0004

Existing rows get shard 0 and no layout row: the first open with a shard count lays them out.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite allows it with a default): no table copy, chunk ids keep AUTOINCREMENT.
    op.add_column("documents", sa.Column("shard", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_documents_shard_status", "documents", ["shard", "status"])
    op.add_column("chunks", sa.Column("shard", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_chunks_shard_id", "chunks", ["shard", "id"])
    op.create_table(
        "removed_chunks",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("chunk_id", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_removed_chunks_shard_id", "removed_chunks", ["shard", "id"])
    op.create_table(
        "shard_layout",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("shards", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
    )
    op.create_table(
        "store_settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )

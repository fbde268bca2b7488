"""Release 0.6.0: where a chunk sits in its document, and what a document was read with.

Revision ID: 0006
Revises: 0005

chunks and staged_chunks get context (title and heading path, sealed), first_page and last_page;
documents get read_settings. Existing rows get NULLs: a document with no read_settings is read
again by the next run of its shard, and its chunks are cut again with their place in it, while
the old chunks stay searchable.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN: nullable, so no table copy on SQLite.
    op.add_column("documents", sa.Column("read_settings", sa.String(128)))
    for table in ("chunks", "staged_chunks"):
        op.add_column(table, sa.Column("context", sa.Text))
        op.add_column(table, sa.Column("first_page", sa.Integer))
        op.add_column(table, sa.Column("last_page", sa.Integer))


def downgrade() -> None:
    for table in ("staged_chunks", "chunks"):
        for column in ("last_page", "first_page", "context"):
            op.drop_column(table, column)
    op.drop_column("documents", "read_settings")

"""Release 0.7.0: the lexical index (keyed hashes of terms) and its wrapped key.

Revision ID: 0007
Revises: 0006

Chunks cut before it have no postings: the next index build of their shard adds them
(store.lexical.backfill), and until then lexical search does not find them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lexical_chunks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("chunk_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "lexical_terms",
        sa.Column("term", sa.LargeBinary(16), primary_key=True),
        sa.Column("text_id", sa.BigInteger, primary_key=True),
        sa.Column("frequency", sa.Integer, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_lexical_terms_text_id", "lexical_terms", ["text_id"])
    op.create_table(
        "lexical_key",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("kek_id", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("lexical_key")
    op.drop_index("ix_lexical_terms_text_id", "lexical_terms")
    op.drop_table("lexical_terms")
    op.drop_table("lexical_chunks")

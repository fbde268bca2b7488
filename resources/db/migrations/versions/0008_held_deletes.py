"""Release 0.8.0: deletes held back when a folder vanishes or empties, or a scan would delete too much.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "held_deletes",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(400), nullable=False),
        sa.Column("deletes", sa.Integer, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("release", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("held_deletes")

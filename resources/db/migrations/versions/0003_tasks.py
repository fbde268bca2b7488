"""Release 0.3.0: routed tasks; a task run's heartbeat has no shard.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(64), nullable=False),
        sa.Column("handler", sa.String(64), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("sla_ms", sa.BigInteger, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("data_size_bytes", sa.BigInteger, nullable=False),
        sa.Column("submitted_via", sa.String(16), nullable=False),
        sa.Column("claim", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("queue_wait_ms", sa.BigInteger),
        sa.Column("run_ms", sa.BigInteger),
        sa.Column("sla_met", sa.Boolean),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_tasks_status", "tasks", ["status"])
    op.create_index("ix_tasks_origin_received", "tasks", ["origin", "received_at"])
    # SQLite cannot drop NOT NULL in place: batch mode copies the table.
    with op.batch_alter_table("run_heartbeats") as batch:
        batch.alter_column("shard", existing_type=sa.Integer, nullable=True)

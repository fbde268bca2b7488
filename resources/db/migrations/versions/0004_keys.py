"""Release 0.4.0: the key vault's versioned data keys and append-only audit trail.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
APPEND_ONLY = "key_audit is append-only"


def upgrade() -> None:
    op.create_table(
        "key_versions",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("wrapped_key", sa.LargeBinary),
        sa.Column("kek_id", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotate_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "uq_key_versions_one_primary",
        "key_versions",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'primary'"),
        postgresql_where=sa.text("status = 'primary'"),
    )
    op.create_table(
        "key_audit",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer),
        sa.Column("run_id", sa.String(64)),
        sa.Column("detail", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_key_audit_event", "key_audit", ["event", "id"])
    _refuse_audit_changes()


def _refuse_audit_changes() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER key_audit_no_{action.lower()} BEFORE {action} ON key_audit "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
            )
        return
    op.execute(
        "CREATE FUNCTION key_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$"
    )
    op.execute(
        "CREATE TRIGGER key_audit_append_only BEFORE UPDATE OR DELETE ON key_audit "
        "FOR EACH ROW EXECUTE FUNCTION key_audit_append_only()"
    )

"""Alembic environment of the Grace store, run only through grace.resources.db.migrations.

The caller passes an open connection inside a transaction (config.attributes["connection"]),
so the migration runs under the caller's lock and commits with it.
"""

from alembic import context

from grace.resources.db import hold_tables, key_tables, lexical_tables  # noqa: F401 (their tables join metadata)
from grace.resources.db.migrations import VERSION_TABLE
from grace.resources.db.schema import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # A Dagster instance may share the database: autogenerate must never see its tables.
    include_name=lambda name, kind, _parent: kind != "table" or name in metadata.tables,
    # SQLite alters constraints by copying the table; PostgreSQL alters in place.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()

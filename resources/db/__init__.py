"""The database: tables, key tables and migrations, one SQLAlchemy code path for SQLite and PostgreSQL."""

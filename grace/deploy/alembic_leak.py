"""Stops a per-tick memory leak of the code server, which sits between Dagster and alembic.

Dagster builds a new DagsterInstance from a ref for every sensor and schedule evaluation, and
a SQLite instance checks its schema with alembic each time. alembic resolves Dagster's
"dagster:_core/storage/alembic" script location with coerce_resource_to_filename, which
registers a fresh ExitStack with atexit on every call. Those are never released: two per
evaluation, about 5 KB, so a code server with busy sensors grew 0.6 MB a minute (10% in a
30-minute soak). alembic 1.20.1, the newest release, still does this.
"""

from __future__ import annotations

import functools

from alembic import util


def stop_alembic_resource_leak() -> None:
    """Resolve each package-resource name once per process; idempotent.

    Safe because an installed package's files do not move while the process runs, so the
    resolved path never changes. alembic looks the function up on alembic.util at call time.
    """
    if not hasattr(util.coerce_resource_to_filename, "cache_info"):
        util.coerce_resource_to_filename = functools.lru_cache(maxsize=64)(util.coerce_resource_to_filename)

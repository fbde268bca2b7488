"""store.holds: deletes held back per source, why, since when, and whether the user let them go.

A scan records a hold instead of deleting in bulk (sensors/delete_guard.py). The documents stay
searchable; `grace sources release NAME` sets release, and the next scan that would hold them
applies the deletes instead. A scan that finds nothing to hold clears the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, insert, select, update

from grace.resources.db.hold_tables import held_deletes
from grace.resources.db.schema import utc_now


@dataclass(frozen=True)
class Hold:
    source: str
    reason: str
    deletes: int
    since: datetime
    release: bool

    def describe(self) -> str:
        """e.g. "10,000 deletes held (the folder is missing, since 2026-12-08 12:03 UTC)"."""
        return f"{self.deletes:,} deletes held ({self.reason}, since {self.since:%Y-%m-%d %H:%M} UTC)"


class DeleteHolds:
    """store.holds"""

    def __init__(self, engine: Engine, writer: Engine):
        self.engine, self.writer = engine, writer

    def of(self, source: str) -> Hold | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(held_deletes).where(held_deletes.c.source == source)).first()
        return _hold(row) if row else None

    def all(self) -> list[Hold]:
        with self.engine.connect() as connection:
            return [_hold(row) for row in connection.execute(select(held_deletes).order_by(held_deletes.c.source))]

    def hold(self, source: str, reason: str, deletes: int) -> Hold:
        """Record the source's deletes as held; a hold already there keeps its since and release."""
        with self.writer.begin() as connection:
            known = connection.execute(select(held_deletes.c.source).where(held_deletes.c.source == source)).first()
            if known:
                connection.execute(
                    update(held_deletes).where(held_deletes.c.source == source).values(reason=reason, deletes=deletes)
                )
            else:
                connection.execute(
                    insert(held_deletes).values(
                        source=source, reason=reason, deletes=deletes, since=utc_now(), release=False
                    )
                )
        held = self.of(source)
        assert held is not None
        return held

    def release(self, source: str) -> Hold | None:
        """Let the next scan apply the source's held deletes; the hold, or None when nothing is held."""
        with self.writer.begin() as connection:
            connection.execute(update(held_deletes).where(held_deletes.c.source == source).values(release=True))
        return self.of(source)

    def clear(self, source: str) -> None:
        with self.writer.begin() as connection:
            connection.execute(delete(held_deletes).where(held_deletes.c.source == source))


def _hold(row) -> Hold:
    since = row.since if row.since.tzinfo else row.since.replace(tzinfo=utc_now().tzinfo)  # SQLite drops the zone
    return Hold(row.source, row.reason, row.deletes, since, bool(row.release))

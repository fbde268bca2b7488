"""Files a watched folder holds that no pattern takes, counted by suffix by each full scan: kept in
store_settings, capped so a hostile folder cannot bloat it, and put in words for stats and status."""

from __future__ import annotations

import heapq
import json
from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from grace.resources.db.schema import store_settings
from grace.resources.text.readers.registry import READ_SUFFIXES

# store_settings name of {source: {suffix: files}}: what each source's last full scan found matching no pattern.
NOT_READ = "not_read"
NO_SUFFIX = "(no suffix)"
OTHER_SUFFIXES = "(other)"  # the files of every suffix past the NOT_READ_SUFFIXES most frequent ones
# A folder of a million random suffixes keeps this many per source (at most a few KB), not a million.
NOT_READ_SUFFIXES = 20


def capped(by_suffix: Mapping[str, int]) -> dict[str, int]:
    """The most frequent suffixes (ties by name, so that a scan of the same folder keeps the same ones), the
    rest summed under OTHER_SUFFIXES."""
    kept = dict(heapq.nsmallest(NOT_READ_SUFFIXES, by_suffix.items(), key=lambda item: (-item[1], item[0])))
    rest = sum(by_suffix.values()) - sum(kept.values())
    return {**kept, OTHER_SUFFIXES: rest} if rest else kept


def describe_not_read(not_read: dict[str, dict[str, int]]) -> dict[str, str]:
    """By source, its files not read in words, e.g. "12 .pptx, 3 .xlsx (no reader); 3 .pdf (not in patterns)":
    a suffix with a reader only needs adding to sources[].patterns."""
    described = {}
    for source, counts in sorted(not_read.items()):
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        unreadable = [_files(suffix, n) for suffix, n in ranked if suffix not in (*READ_SUFFIXES, OTHER_SUFFIXES)]
        readable = [_files(suffix, n) for suffix, n in ranked if suffix in READ_SUFFIXES]
        parts = [f"{', '.join(unreadable)} (no reader)"] if unreadable else []
        parts += [f"{', '.join(readable)} (not in patterns)"] if readable else []
        parts += [f"{counts[OTHER_SUFFIXES]} with other suffixes"] if OTHER_SUFFIXES in counts else []
        described[source] = "; ".join(parts)
    return described


def _files(suffix: str, count: int) -> str:
    return f"{count} without a suffix" if suffix == NO_SUFFIX else f"{count} {suffix}"


def change_not_read(connection, change) -> None:
    """Rewrite the not-read counts of every source as change(counts) says, the row locked meanwhile: each
    source's sensor writes its own part of one value."""
    dialect_insert = sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert
    connection.execute(dialect_insert(store_settings).values(name=NOT_READ, value="{}").on_conflict_do_nothing())
    current = json.loads(
        connection.execute(
            select(store_settings.c.value).where(store_settings.c.name == NOT_READ).with_for_update()
        ).scalar_one()
    )
    changed = change(current)
    if changed != current:
        connection.execute(
            update(store_settings).where(store_settings.c.name == NOT_READ).values(value=json.dumps(changed))
        )

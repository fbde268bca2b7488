"""A scan's deletes held back when they look like a vanished folder rather than the user's deletes.

An unmounted share, a sync client that failed, a folder renamed away: each looks to a scan like
every document deleted at once. Taking them all out of search, and re-reading them when the folder
comes back, is the wrong default. So a scan holds its deletes (store.holds) when the source's
folder is missing, unreadable or, for a full scan, empty while the store holds active documents of
it, or when it would delete more than one of them and more than sources[].max_delete_fraction of
them. The documents stay
searchable; the hold clears itself when the folder comes back, and `grace sources release NAME`
applies the deletes instead.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from grace.core.manifest import SourceConfig
from grace.resources.store.held_deletes import Hold
from grace.resources.store.store import Store


def folder_problem(root: Path) -> str | None:
    """Why the source's folder cannot be listed ("the folder is missing"), or None when it can."""
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except FileNotFoundError:
        return "the folder is missing"
    except NotADirectoryError:
        return "the folder's path is not a folder"
    except PermissionError:
        return "the folder cannot be read"
    return None


def hold_reason(
    source: SourceConfig, deletes: int, documents: int, problem: str | None, found_none: bool
) -> str | None:
    """Why deletes of active (searchable) documents should be held, or None when they are the user's.

    documents: the source's active documents; found_none: a scan of the whole folder listed no file
    that the patterns match. A single delete is never held for the fraction: that is a delete made
    one by one, whatever the folder's size.
    """
    if deletes == 0:
        return None
    if problem is not None:
        return problem
    if found_none:
        return "the folder holds no file the patterns match"
    if deletes > 1 and deletes > source.max_delete_fraction * documents:
        return (
            f"the scan would delete {deletes:,} of {documents:,} documents, more than "
            f"max_delete_fraction {source.max_delete_fraction:g}"
        )
    return None


def guard(
    store: Store,
    source: SourceConfig,
    deleted: list[str],
    active: Collection[str],
    documents: int,
    whole_folder: bool,
    found_none: bool,
) -> tuple[list[str], Hold | None]:
    """(the deletes to apply, the hold recorded instead, if any). active: the paths of the source's
    active documents among those the scan compared; documents: how many the source has in all.

    A hold the user released lets these deletes through and is cleared. A scan of the whole folder
    that has nothing to hold clears the source's hold: the folder is back, or the deletes are few.
    Deleting documents nobody can search (quarantined, or never read) is never held.
    """
    searchable = sum(path in active for path in deleted)
    problem = folder_problem(source.path) if searchable else None  # no delete to hold: no need to look
    reason = hold_reason(source, searchable, documents, problem, found_none)
    known = store.holds.of(source.name)
    if reason is None or (known is not None and known.release):
        if known is not None and (whole_folder or reason is not None):  # a write only when a hold ends
            store.holds.clear(source.name)
        return deleted, None
    return [], store.holds.hold(source.name, reason, searchable)

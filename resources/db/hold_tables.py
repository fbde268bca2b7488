"""Deletes held back: a scan that would take a source's documents out of search in bulk (its folder
missing, unreadable or empty, or past sources[].max_delete_fraction) records why here instead."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Integer, String, Table

from grace.resources.db.schema import metadata

held_deletes = Table(
    "held_deletes",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("reason", String(400), nullable=False, doc="why, e.g. 'the folder is missing'"),
    Column("deletes", Integer, nullable=False, doc="documents the scan would have deleted"),
    Column("since", DateTime(timezone=True), nullable=False, doc="when the deletes were first held"),
    Column("release", Boolean, nullable=False, doc="grace sources release asked the next scan to apply them"),
)

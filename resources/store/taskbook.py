"""Routed tasks in the store: accepted once, then moved along their lifecycle from Dagster's run records.

received -> queued (its run id) -> started -> succeeded | failed. Only the task_status sensor
moves a task, from what the run records say; a handler writes its result or error beside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from grace.core.task_model import Task, TaskRejected, canonical_json
from grace.resources.db.schema import as_utc, tasks, utc_now, writer_of

RECEIVED, QUEUED, STARTED, SUCCEEDED, FAILED = "received", "queued", "started", "succeeded", "failed"
OPEN_STATUSES = (RECEIVED, QUEUED, STARTED)
ENDED_STATUSES = (SUCCEEDED, FAILED)


@dataclass(frozen=True)
class TaskRecord:
    """A task row as the store holds it."""

    task_id: str
    type: str
    origin: str
    handler: str
    priority: int
    sla_ms: int
    payload: str
    data_size_bytes: int
    submitted_via: str
    claim: str | None
    status: str
    run_id: str | None
    received_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    queue_wait_ms: int | None
    run_ms: int | None
    sla_met: bool | None
    result: str | None
    error: str | None

    @classmethod
    def from_row(cls, row: Any) -> TaskRecord:
        values = dict(row._mapping)
        for name in ("received_at", "queued_at", "started_at", "finished_at"):
            if values[name] is not None:
                values[name] = as_utc(values[name])
        return cls(**values)

    def task(self) -> Task:
        """The accepted task, as its handler sees it."""
        return Task(
            task_id=self.task_id,
            type=self.type,
            origin=self.origin,
            priority=self.priority,
            sla_ms=self.sla_ms,
            payload=json.loads(self.payload),
            data_size_bytes=self.data_size_bytes,
            handler=self.handler,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times in ISO 8601 UTC, payload and result decoded."""
        values = asdict(self)
        for name, value in values.items():
            if isinstance(value, datetime):
                values[name] = value.isoformat()
        values["payload"] = json.loads(self.payload)
        values["result"] = json.loads(self.result) if self.result is not None else None
        return values


class DuplicateTask(TaskRejected):
    def __init__(self, task_id: str):
        super().__init__(
            [("task_id", f"{task_id!r} is already taken by another task; leave task_id out to get a new one")]
        )


class TaskBook:
    """The tasks table behind one engine; every method is one short transaction."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.writer = writer_of(engine)

    def add(self, task: Task, submitted_via: str, claim: str | None = None, now: datetime | None = None) -> None:
        """Accept a validated task as received; DuplicateTask if its id is taken."""
        row = {
            "task_id": task.task_id,
            "type": task.type,
            "origin": task.origin,
            "handler": task.handler,
            "priority": task.priority,
            "sla_ms": task.sla_ms,
            "payload": canonical_json(task.payload).decode(),
            "data_size_bytes": task.data_size_bytes,
            "submitted_via": submitted_via,
            "claim": claim,
            "status": RECEIVED,
            "received_at": now or utc_now(),
        }
        try:
            with self.writer.begin() as connection:
                connection.execute(insert(tasks).values(**row))
        except IntegrityError:
            raise DuplicateTask(task.task_id) from None

    def get(self, task_id: str) -> TaskRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(tasks).where(tasks.c.task_id == task_id)).first()
        return TaskRecord.from_row(row) if row is not None else None

    def task_of_claim(self, claim: str) -> str | None:
        """The id of the task accepted from an inbox claim, if that claim was accepted."""
        with self.engine.connect() as connection:
            return connection.execute(select(tasks.c.task_id).where(tasks.c.claim == claim)).scalar()

    def with_status(self, statuses: Sequence[str], limit: int = 1000) -> list[TaskRecord]:
        """Tasks in these statuses, oldest first."""
        query = select(tasks).where(tasks.c.status.in_(statuses)).order_by(tasks.c.received_at).limit(limit)
        with self.engine.connect() as connection:
            return [TaskRecord.from_row(row) for row in connection.execute(query)]

    def move(self, task_id: str, expected_status: str, **values: Any) -> bool:
        """Apply a lifecycle change if the task is still in expected_status; False if someone moved it first."""
        unknown = set(values) - {field.name for field in fields(TaskRecord)}
        if unknown:
            raise ValueError(f"not task columns: {sorted(unknown)}")
        with self.writer.begin() as connection:
            moved = connection.execute(
                update(tasks).where(tasks.c.task_id == task_id, tasks.c.status == expected_status).values(**values)
            )
        return moved.rowcount == 1

    def record_outcome(self, task_id: str, result: Any = None, error: str | None = None) -> None:
        """What the handler returned (JSON) or why it failed; the status follows from the run."""
        encoded = None if result is None else canonical_json(result).decode()
        with self.writer.begin() as connection:
            connection.execute(update(tasks).where(tasks.c.task_id == task_id).values(result=encoded, error=error))

    def counts_by_status(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status))
            return {status: count for status, count in rows}

    def since(self, received_after: datetime) -> list[TaskRecord]:
        """Tasks received after the time, for stats over a window."""
        query = select(tasks).where(tasks.c.received_at > received_after)
        with self.engine.connect() as connection:
            return [TaskRecord.from_row(row) for row in connection.execute(query)]

    def sla_breaches(self) -> dict[str, int]:
        """Finished tasks that missed their SLA, per origin, since the store began."""
        query = select(tasks.c.origin, func.count()).where(tasks.c.sla_met.is_(False)).group_by(tasks.c.origin)
        with self.engine.connect() as connection:
            return {origin: count for origin, count in connection.execute(query)}


def milliseconds(later: datetime, earlier: datetime) -> int:
    return max(0, round((later - earlier) / timedelta(milliseconds=1)))

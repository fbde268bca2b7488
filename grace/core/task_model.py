"""A task: what `grace submit`, a task file or the seed's intent becomes once validated.

Validation is the whole of routing's input handling: a task is accepted complete (id, handler,
priority, SLA, size) or rejected with every problem named by field.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from grace.core.manifest import Manifest
from grace.core.names import (
    DATA_SIZE_TAG,
    PRIORITY_TAG,
    RETRY_ON_STEP_FAILURE_TAG,
    SLA_TAG,
    TASK_ID_TAG,
    TASK_TYPE_TAG,
    origin_tags,
)
from grace.core.routing_config import MAX_SLA_MS, TAG_VALUE_PATTERN

PayloadModels = Mapping[str, type[BaseModel] | None]  # handler name -> its payload model

# Dagster's dagster/priority: higher starts first, and runs without the tag count as 0 ("normal").
PRIORITY_LEVELS = {"low": -10, "normal": 0, "high": 10, "critical": 20}
PRIORITY_RANGE = (-100, 100)
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$"
INTENT_ORIGIN = "intent"


class TaskRejected(Exception):
    """Why a task was not accepted: (field, message) pairs, each saying how to fix it."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{where}: {message}" for where, message in problems))

    def as_dict(self) -> dict:
        return {"errors": [{"field": where, "message": message} for where, message in self.problems]}


class TaskSubmission(BaseModel):
    """The fields a task file or `grace submit` gives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str | None = Field(default=None, pattern=TASK_ID_PATTERN, description="generated when absent")
    type: str = Field(pattern=TAG_VALUE_PATTERN, description="a task type routed in grace.yaml")
    origin: str = Field(pattern=TAG_VALUE_PATTERN, description="who sent it; quotas are per origin")
    priority: Literal["low", "normal", "high", "critical"] | int = Field(
        default="normal", description="low, normal, high, critical, or -100..100 (higher starts first)"
    )
    sla_ms: int | None = Field(default=None, ge=1, le=MAX_SLA_MS, description="ms from submission to finished")
    payload: dict[str, JsonValue] = Field(default_factory=dict, description="a JSON object for the handler")


class IntentSubmission(BaseModel):
    """The seed's intent: a task of origin `intent` whose type is its domain."""

    model_config = ConfigDict(extra="allow", frozen=True)  # further intent fields ride in the payload

    intent_id: str = Field(pattern=TASK_ID_PATTERN)
    goal: str = Field(min_length=1)
    domain: str = Field(pattern=TAG_VALUE_PATTERN)
    sla_ms: int | None = Field(default=None, ge=1, le=MAX_SLA_MS)
    priority: Literal["low", "normal", "high", "critical"] | int = "normal"

    def as_task(self) -> dict[str, Any]:
        extra = dict(self.model_extra or {})
        return {
            "task_id": self.intent_id,
            "type": self.domain,
            "origin": INTENT_ORIGIN,
            "priority": self.priority,
            "sla_ms": self.sla_ms,
            "payload": {**extra, "intent_id": self.intent_id, "goal": self.goal, "domain": self.domain},
        }


@dataclass(frozen=True)
class Task:
    task_id: str
    type: str
    origin: str
    priority: int
    sla_ms: int
    payload: dict[str, Any]
    data_size_bytes: int
    handler: str


def canonical_json(payload: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes a payload's size is measured in, whatever its formatting."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def parse_task_json(data: bytes | str, manifest: Manifest, payload_models: PayloadModels) -> Task:
    """Decode a task (or intent) from JSON text, then validate it like parse_task."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as error:
        raise TaskRejected([("(file)", f"is not UTF-8 text (byte {error.start}); save it as UTF-8 JSON")]) from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise TaskRejected(
            [("(json)", f"malformed JSON at line {error.lineno} column {error.colno}: {error.msg}")]
        ) from None
    except ValueError as error:
        raise TaskRejected([("(json)", str(error))]) from None
    return parse_task(value, manifest, payload_models)


def parse_task(data: Any, manifest: Manifest, payload_models: PayloadModels) -> Task:
    """Validate a task (or the seed's intent shape) against grace.yaml; raise TaskRejected naming each problem.

    payload_models maps every known handler to its payload model (None: any JSON object); the
    project's handlers are user code, so the layer that loads them passes it in.
    """
    if not isinstance(data, dict):
        raise TaskRejected([("(top level)", f"a task is a JSON object, not {type(data).__name__}")])
    is_intent = "intent_id" in data and "type" not in data
    try:
        fields = IntentSubmission.model_validate(data).as_task() if is_intent else data
        submission = TaskSubmission.model_validate(fields)
    except ValidationError as error:
        raise TaskRejected(_problems(error)) from None
    routing = manifest.routing
    handler_name = routing.routes.get(submission.type)
    if handler_name is None:
        raise TaskRejected(
            [("type", f"unknown task type {submission.type!r}; grace.yaml routes: {', '.join(sorted(routing.routes))}")]
        )
    priority = _priority(submission.priority)
    size = len(canonical_json(submission.payload))
    if size > routing.max_payload_bytes:
        raise TaskRejected(
            [
                (
                    "payload",
                    f"is {size} bytes of canonical JSON, over the cap of {int(routing.max_payload_bytes)} "
                    "(routing.max_payload_bytes); send a smaller payload or a reference to the data",
                )
            ]
        )
    if handler_name not in payload_models:
        raise TaskRejected(
            [("type", f"routes to handler {handler_name!r}, which is neither built in nor in {routing.handlers}")]
        )
    model = payload_models[handler_name]
    if model is not None:
        try:
            model.model_validate(submission.payload, context={"manifest": manifest})
        except ValidationError as error:
            raise TaskRejected(_problems(error, prefix="payload.")) from None
    return Task(
        task_id=submission.task_id or uuid.uuid4().hex,
        type=submission.type,
        origin=submission.origin,
        priority=priority,
        sla_ms=submission.sla_ms or routing.default_sla_ms,
        payload=dict(submission.payload),
        data_size_bytes=size,
        handler=handler_name,
    )


def _priority(value: str | int) -> int:
    number = PRIORITY_LEVELS[value] if isinstance(value, str) else value
    low, high = PRIORITY_RANGE
    if not low <= number <= high:
        raise TaskRejected(
            [("priority", f"{number} is out of range; use {low}..{high} or low, normal, high, critical")]
        )
    return number


def _problems(error: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    problems = []
    for item in error.errors(include_url=False):
        if item["loc"] and item["loc"][0] == "priority" and not prefix:
            # One line for the union (a name or a number) instead of one per alternative.
            low, high = PRIORITY_RANGE
            problem = (
                "priority",
                f"{item['input']!r} is not a priority; use low, normal, high, critical or {low}..{high}",
            )
            if problem not in problems:
                problems.append(problem)
            continue
        where = prefix + (".".join(str(part) for part in item["loc"]) or "(top level)")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required"
        elif item["type"] == "extra_forbidden":
            message = "is not a known field; check its spelling"
        problems.append((where, message))
    return problems


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON; use a number or null")


TASK_OP = "run_task"  # the one op of every task job; its config names the task


def task_run_config(task_id: str) -> dict:
    """Run config of a task's run: the op reads the task from the store by id."""
    return {"ops": {TASK_OP: {"config": {"task_id": task_id}}}}


def task_run_tags(task: Task, listed_origins: Collection[str]) -> dict[str, str]:
    """Every tag of a routed run: origin (quota), id, type, priority (queue order), SLA and size."""
    return {
        **origin_tags(task.origin, listed_origins),
        TASK_ID_TAG: task.task_id,
        TASK_TYPE_TAG: task.type,
        PRIORITY_TAG: str(task.priority),
        SLA_TAG: str(task.sla_ms),
        DATA_SIZE_TAG: str(task.data_size_bytes),
        # A worker that died is retried by the instance's run retries; a handler that raised is not.
        RETRY_ON_STEP_FAILURE_TAG: "false",
    }

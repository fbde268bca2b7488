"""What a task handler is: the @handler decorator, its context, and the built-ins' payloads.

grace.yaml's routes name handlers; it never names a module. A handler is either built in
(ingest, search, reindex, rotate_keys) or a function marked @handler in a module of the folder that
routing.handlers names (`handlers/` beside grace.yaml), and nothing else can be routed to. Loading
that folder is user code, so it happens above this layer: grace/resources/tasks/project_handlers.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from grace.core.globs import wanted
from grace.core.index_config import SearchMode
from grace.core.names import HANDLER_NAME_PATTERN


@dataclass(frozen=True)
class TaskContext:
    """What a handler gets besides its payload: the task, the manifest, a logger and the services.

    services holds the run's resources by name: "store", "embedder", "vector_index", and "instance"
    (the Dagster instance, so a handler can tell whether another run has ended).
    """

    task: Any  # grace.core.task_model.Task
    manifest: Any  # grace.core.manifest.Manifest
    run_id: str
    log: logging.Logger | logging.LoggerAdapter
    services: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HandlerSpec:
    name: str
    function: Callable[[Any, TaskContext], Any]
    payload: type[BaseModel] | None  # validated at submission; the handler receives the model
    description: str


def handler(name: str, payload: type[BaseModel] | None = None) -> Callable:
    """Mark a function as the task handler `name`: fn(payload, context) -> JSON-serializable result.

    With `payload`, a pydantic model, payloads are validated when a task is submitted (a bad
    one is rejected, not run) and the handler receives the model instead of a dict.
    """
    if not re.match(HANDLER_NAME_PATTERN, name):
        raise ValueError(f"handler name {name!r} must be lowercase letters, digits and _, starting with a letter")

    def register(function: Callable) -> Callable:
        description = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else name
        function.__grace_handler__ = HandlerSpec(name, function, payload, description)
        return function

    return register


class IngestPayload(BaseModel):
    """Content and a title, written into a watched folder as a file, so that it follows a dropped file's path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field(min_length=1, max_length=200, description="becomes the file name unless path is given")
    content: str = Field(min_length=1, description="the document's text")
    source: str | None = Field(default=None, description="the watched source to write into; default: the first")
    path: str | None = Field(
        default=None, max_length=1000, description="file path inside the source's folder, e.g. notes/q3.md"
    )

    @field_validator("title", "content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        manifest = (info.context or {}).get("manifest")
        names = [source.name for source in manifest.sources] if manifest is not None else []
        if manifest is not None and not names:
            raise ValueError("grace.yaml has no sources, so there is no folder to ingest into; add one under sources:")
        if value is not None and manifest is not None and value not in names:
            raise ValueError(f"unknown source {value!r}; grace.yaml has: {', '.join(names)}")
        return value

    @field_validator("path")
    @classmethod
    def _inside_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        parts = value.replace("\\", "/").split("/")
        if value.startswith("/") or ".." in parts or "" in parts or "\x00" in value or "\\" in value:
            raise ValueError(
                f"{value!r} is outside the watched roots: give a relative path inside the source's folder, "
                "with / between folders and no .. (e.g. notes/q3.md)"
            )
        manifest = (info.context or {}).get("manifest")
        if manifest is not None and manifest.sources:
            name = info.data.get("source") or manifest.sources[0].name
            source = next((s for s in manifest.sources if s.name == name), None)
            if source is not None and not wanted(value, source):
                raise ValueError(
                    f"{value!r} would not be ingested by source '{source.name}' (patterns {source.patterns}, "
                    f"exclude {source.exclude}); pick a name those patterns match"
                )
        return value


class SearchPayload(BaseModel):
    """A query (or an intent's goal) and how many results to keep."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # an intent carries its id and domain along

    query: str = Field(
        validation_alias=AliasChoices("query", "goal"),
        min_length=1,
        max_length=10_000,
        description="what to look for; an intent's goal is used as the query",
    )
    k: int = Field(default=5, ge=1, le=100, description="number of results")
    mode: SearchMode | None = Field(
        default=None, description="hybrid, dense or lexical; default: grace.yaml's search.mode"
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class ReindexPayload(BaseModel):
    """Which shards to rebuild now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shards: list[int] | None = Field(default=None, description="shard numbers; default: every shard")

    @field_validator("shards")
    @classmethod
    def _existing_shards(cls, value: list[int] | None, info: ValidationInfo) -> list[int] | None:
        manifest = (info.context or {}).get("manifest")
        if value is None or manifest is None:
            return value
        count = manifest.index.shards
        wrong = sorted({shard for shard in value if not 0 <= shard < count})
        if wrong:
            raise ValueError(f"no shard {wrong}: grace.yaml has {count} shards, numbered 0 to {count - 1}")
        if not value:
            raise ValueError("is empty; leave it out to rebuild every shard")
        return sorted(set(value))


class RotateKeysPayload(BaseModel):
    """Rotate the data key now, or only if it is due; either way every encrypted row is rewrapped to the primary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    force: bool = Field(
        default=False, strict=True, description="make a new primary version even if the current one is not due"
    )


BUILTIN_PAYLOADS: dict[str, type[BaseModel]] = {
    "ingest": IngestPayload,
    "search": SearchPayload,
    "reindex": ReindexPayload,
    "rotate_keys": RotateKeysPayload,
}

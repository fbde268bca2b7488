"""What a search may return: a filter on the chunks' source, path, type, modification time, page and
heading, checked by pydantic so that a bad one is refused with its field's name."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grace.core.globs import glob_regex

_SUFFIX = re.compile(r"[a-z0-9_+-]+(\.[a-z0-9_+-]+)*")


class UnknownSource(ValueError):
    """A filter names a source grace.yaml does not have."""


class SearchFilter(BaseModel):
    """Every field set must hold for a chunk to be returned; an empty filter returns everything."""

    # strict: JSON's types as sent ("2" is not a page); times alone are parsed, from ISO 8601 text.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    source: str | None = Field(default=None, min_length=1, max_length=64, description="a source's name")
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="a glob over the path within its source, as patterns use them: ** spans folders, * does not",
    )
    type: str | None = Field(default=None, description="a file suffix, e.g. pdf or .md (case does not matter)")
    modified_after: datetime | None = Field(
        default=None, strict=False, description="ISO 8601; files modified at or after it (no offset: UTC)"
    )
    modified_before: datetime | None = Field(
        default=None, strict=False, description="ISO 8601; files modified before it"
    )
    page: int | None = Field(default=None, ge=1, description="chunks on this page (paged documents: PDF)")
    heading: str | None = Field(
        default=None, min_length=1, max_length=1000, description="chunks under a heading holding this text"
    )

    @field_validator("path")
    @classmethod
    def _relative_glob(cls, path: str) -> str:
        if path.startswith("/") or "\\" in path:
            raise ValueError("is a glob relative to the source folder with / between folders, e.g. guides/**/*.md")
        glob_regex(path)
        return path

    @field_validator("type")
    @classmethod
    def _suffix(cls, suffix: str) -> str:
        folded = suffix.strip().lower().removeprefix(".")
        if not _SUFFIX.fullmatch(folded):
            raise ValueError(f"{suffix!r} is not a file suffix; write one like pdf, md or tar.gz")
        return folded

    @field_validator("modified_after", "modified_before")
    @classmethod
    def _aware(cls, moment: datetime) -> datetime:
        # A moment without an offset is read as UTC, the zone the store keeps times in, never the host's.
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment

    @model_validator(mode="after")
    def _a_real_interval(self) -> SearchFilter:
        if self.modified_after and self.modified_before and self.modified_after >= self.modified_before:
            raise ValueError(
                f"modified_after ({self.modified_after.isoformat()}) is not before modified_before "
                f"({self.modified_before.isoformat()}): no file can match"
            )
        return self

    @property
    def is_empty(self) -> bool:
        return all(value is None for value in self.model_dump().values())

    def check_sources(self, names: Sequence[str]) -> None:
        """UnknownSource, naming filter.source, when grace.yaml has no source of that name."""
        if names and self.source is not None and self.source not in names:
            raise UnknownSource(f"filter.source: no source named {self.source!r}; grace.yaml names {', '.join(names)}")

    def path_matches(self, path: str) -> bool:
        """The path and type parts, which the store cannot test in SQL alike on SQLite and PostgreSQL."""
        if self.type is not None and not path.lower().endswith("." + self.type):
            return False
        return self.path is None or glob_regex(self.path).match(path) is not None

    def heading_matches(self, heading: Sequence[str]) -> bool:
        return self.heading is None or self.heading.casefold() in " > ".join(heading).casefold()

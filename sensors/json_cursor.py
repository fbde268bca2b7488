"""Sensor cursors kept as the JSON of a dataclass."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Self


class JsonCursor:
    """Mixed into a dataclass: parse() reads what dump() wrote; an empty or unreadable cursor starts afresh."""

    @classmethod
    def parse(cls, text: str | None) -> Self:
        try:
            return cls(**json.loads(text)) if text else cls()
        except (TypeError, ValueError):
            return cls()

    def dump(self) -> str:
        return json.dumps(asdict(self))

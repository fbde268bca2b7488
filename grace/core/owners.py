"""grace.yaml's `owners`: who answers for Grace's assets; the Dagster UI shows them on every asset.

Dagster's own rule (dagster._core.definitions.utils.is_valid_owner), on the standard library alone:
loading grace.yaml must not import Dagster. tests/dagster/test_ui_story.py holds the two rules together.
"""

from __future__ import annotations

import re

# Dagster's email pattern, matched whole.
EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Z|a-z]{2,7}\b")
TEAM_PREFIX = "team:"
DEFAULT_OWNERS = ("team:grace",)


def is_valid_owner(owner: str) -> bool:
    """An email address, or a team name after `team:`."""
    return bool(EMAIL.fullmatch(owner)) or (owner.startswith(TEAM_PREFIX) and len(owner) > len(TEAM_PREFIX))


def check_owner(owner: str) -> str:
    if not is_valid_owner(owner):
        raise ValueError(f"{owner!r} is neither an email address nor a team: write e.g. you@example.com or team:search")
    return owner

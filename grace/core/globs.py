"""Globs over /-separated relative paths, as grace.yaml's patterns and exclude use them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from grace.core.manifest import SourceConfig


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob over /-separated relative paths: ** spans folders, * and ? do not."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(relative_path: str, patterns: Sequence[str]) -> bool:
    return any_glob(tuple(patterns)).match(relative_path) is not None


@lru_cache(maxsize=256)
def any_glob(patterns: tuple[str, ...]) -> re.Pattern[str]:
    # One regex for a whole list: a full scan tests every path of the folder against it.
    return re.compile("|".join(f"(?:{glob_regex(pattern).pattern})" for pattern in patterns) or r"(?!)")


def wanted(relative_path: str, source: SourceConfig) -> bool:
    """The source ingests this path: a pattern matches and no exclude glob does."""
    return matches(relative_path, source.patterns) and not matches(relative_path, source.exclude)


def excluded_folder(relative_folder: str, exclude: Sequence[str]) -> bool:
    """Every path below the folder is excluded (an exclude glob "X/**" with X matching it): skip it whole."""
    return any(pattern.endswith("/**") and glob_regex(pattern[:-3]).match(relative_folder) for pattern in exclude)

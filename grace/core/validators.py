"""Field checks shared by the manifest's sections."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationInfo


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    """Make a manifest path absolute, relative to the folder that holds grace.yaml."""
    base = Path((info.context or {}).get("base_dir", "."))
    return (base / path.expanduser()).resolve()


def validate_cron(expression: str) -> str:
    from dagster._utils.schedules import is_valid_cron_string

    if not is_valid_cron_string(expression):
        raise ValueError(f"{expression!r} is not a cron expression; use five fields, e.g. '0 * * * *' for hourly")
    return expression

"""Field checks shared by the manifest's sections."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationInfo


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    """Make a manifest path absolute, relative to the folder that holds grace.yaml."""
    base = Path((info.context or {}).get("base_dir", "."))
    return (base / path.expanduser()).resolve()


def validate_cron(expression: str) -> str:
    """Dagster's own rule (its is_valid_cron_string), on croniter alone: loading grace.yaml must not import
    Dagster, which costs the CLI half a second. tests/unit/core/test_manifest.py holds the two rules together."""
    from croniter import croniter

    valid = croniter.is_valid(expression)
    if valid:
        fields = croniter.expand(expression)[0]
        # Five fields (no seconds), and no 30th or 31st of February: a schedule that would never fire.
        valid = len(fields) == 5 and not (fields[3] == [2] and len(fields[2]) == 1 and fields[2][0] in (30, 31))
    if not valid:
        raise ValueError(f"{expression!r} is not a cron expression; use five fields, e.g. '0 * * * *' for hourly")
    return expression

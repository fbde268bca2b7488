"""grace.yaml's `keys` section: where the key-encryption key lives and how often data keys rotate."""

from __future__ import annotations

import re
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from grace.core.secrets import SecretReference
from grace.core.validators import validate_cron

DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_KEY_FILE = "master.key"  # in state_dir, created 0600 by `grace dev` on first start


def parse_duration(value: object) -> timedelta:
    """'30d', '12h', '15m' or '90s' (or a number of seconds) as a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        match = DURATION.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a duration; write a whole number and a unit: 90s, 15m, 12h or 30d")
        seconds = int(match.group(1)) * UNIT_SECONDS[match.group(2)]
    if seconds < 1:
        raise ValueError("must be at least 1s")
    return timedelta(seconds=seconds)


class KeysConfig(BaseModel):
    """Text in the store is encrypted under versioned data keys, each wrapped by the KEK."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kek: SecretReference | None = Field(
        default=None,
        description="where the key-encryption key lives: env:NAME or file:PATH (mode 0600); "
        f"default: file:<state_dir>/{DEFAULT_KEY_FILE}, created on first `grace dev`",
    )
    rotate_every: timedelta = Field(default=timedelta(days=30), description="a data key's life, e.g. 30d, 12h")
    cron: str = Field(default="0 3 * * *", description="when rotate_keys checks whether the primary is due (UTC)")
    min_decryption_versions: int = Field(
        default=2, ge=1, le=100, description="the newest versions never destroyed, whatever uses them"
    )
    rewrap_batch: int = Field(default=500, ge=1, le=100_000, description="rows re-encrypted per transaction")

    _duration = field_validator("rotate_every", mode="before")(parse_duration)
    _cron = field_validator("cron")(validate_cron)

"""When the primary data key counts as overdue, for key_status's primary_not_overdue check.

rotate_keys runs on keys.cron and rotates a primary that is due, so a primary due at T is replaced at the
schedule's first tick at or after T. Only once that tick, plus ROTATION_RUN_GRACE for its run, has passed
does the check fail: a rotation that waits for its tick is on time; a schedule that stopped, or runs that
fail, are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter

from grace.resources.db.key_tables import KeyStatus, KeyVersion, aware_utc

KEY_STATUS = "key_status"  # the asset the check is on (pipelines/keys.py), evaluated by a sensor too
OVERDUE_CHECK = "primary_not_overdue"
ROTATION_RUN_GRACE = timedelta(hours=1)
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class OverdueFinding:
    """The check's outcome; metadata holds plain numbers and text, the same keys every time."""

    passed: bool
    description: str
    metadata: dict


def overdue_after(rotate_after: datetime, cron: str) -> datetime:
    """The first tick of cron at or after rotate_after (UTC), plus ROTATION_RUN_GRACE."""
    due = aware_utc(rotate_after)
    tick = croniter(cron, due - timedelta(seconds=1)).get_next(datetime)
    return aware_utc(tick) + ROTATION_RUN_GRACE


def primary_finding(versions: list[KeyVersion], cron: str, now: datetime | None = None) -> OverdueFinding:
    """Whether the primary among versions is past its rotation by the schedule, with the numbers to plot."""
    now = aware_utc(now)
    primary = next((version for version in versions if version.status == KeyStatus.PRIMARY), None)
    if primary is None:
        return OverdueFinding(
            True,
            "no key version yet: the first write or rotate_keys creates version 1",
            {"primary_age_days": 0.0, "hours_past_due": 0.0, "overdue_after": "none"},
        )
    deadline = overdue_after(primary.rotate_after, cron)
    due = primary.rotate_after.isoformat(timespec="seconds")
    past_due = max(0.0, (now - primary.rotate_after).total_seconds() / 3600)
    metadata = {
        "primary_age_days": round((now - primary.created_at).total_seconds() / SECONDS_PER_DAY, 3),
        "hours_past_due": round(past_due, 3),
        "overdue_after": deadline.isoformat(timespec="seconds"),
    }
    if now > deadline:
        description = (
            f"primary key version {primary.version} was due at {due}, and keys.cron ({cron}) should have rotated "
            f"it by {metadata['overdue_after']}: run rotate_keys (or `grace keys rotate`), and check that "
            "rotate_keys_schedule is running and its runs succeed"
        )
    elif past_due:
        description = (
            f"primary key version {primary.version} is due since {due}; rotate_keys_schedule rotates it at its "
            f"next tick (overdue after {metadata['overdue_after']})"
        )
    else:
        description = f"primary key version {primary.version} is due at {due}"
    return OverdueFinding(now <= deadline, description, metadata)

"""key_status's primary_not_overdue check, evaluated without a run. rotate_keys evaluates it only when it
runs, so a schedule that stopped, or whose runs fail before key_status, would never fail the check."""

from __future__ import annotations

import time
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from grace.core.manifest import Manifest
from grace.resources.keys.overdue import KEY_STATUS, OVERDUE_CHECK, primary_finding
from grace.resources.wiring.dagster_resources import KeyVaultResource
from grace.sensors.json_cursor import JsonCursor

CHECK_SECONDS = 60  # key_versions is a few rows: a look a minute is cheap
REPORT_EVERY_SECONDS = 3600.0  # an unchanged outcome is recorded again this often, so the UI shows it is current


@dataclass
class KeysCursor(JsonCursor):
    """The outcome last recorded (passed, and when the primary of then became overdue) and when (epoch seconds)."""

    passed: bool | None = None
    overdue_after: str = ""
    reported_at: float = 0.0


def build_keys_overdue_sensor(manifest: Manifest) -> SensorDefinition:
    cron = manifest.keys.cron

    @sensor(
        name="keys_overdue",
        minimum_interval_seconds=CHECK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description="Evaluates key_status's primary_not_overdue check every minute, without a run, and records it "
        "when its outcome changes (and hourly): a rotate_keys_schedule that stopped fails the check.",
    )
    def keys_overdue(context: SensorEvaluationContext, key_vault: KeyVaultResource):
        finding = primary_finding(key_vault.get().versions(), cron)
        cursor, now = KeysCursor.parse(context.cursor), time.time()
        # overdue_after moves with each new primary: a rotation is recorded at once.
        outcome = (finding.passed, finding.metadata["overdue_after"])
        if outcome == (cursor.passed, cursor.overdue_after) and now - cursor.reported_at < REPORT_EVERY_SECONDS:
            return SensorResult(cursor=cursor.dump(), skip_reason=f"unchanged: {finding.description}")
        evaluation = AssetCheckEvaluation(
            asset_key=AssetKey(KEY_STATUS),
            check_name=OVERDUE_CHECK,
            passed=finding.passed,
            severity=AssetCheckSeverity.ERROR,
            description=finding.description,
            metadata=finding.metadata,
        )
        if not finding.passed:
            context.log.error(finding.description)
        cursor = KeysCursor(finding.passed, finding.metadata["overdue_after"], now)
        return SensorResult(asset_events=[evaluation], cursor=cursor.dump(), skip_reason=finding.description)

    return keys_overdue

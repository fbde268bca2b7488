"""Key jobs: rotate_keys (a new primary version when due, every encrypted column rewrapped, provably unused old
versions destroyed) on keys.cron, and the key_status asset, whose primary_not_overdue check fails when rotation lags
behind its schedule (resources/keys/overdue.py).

Dagster reads the config class from the annotations, so this module keeps them unquoted (no __future__ import).
"""

from datetime import datetime

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSelection,
    Config,
    JobDefinition,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
    define_asset_job,
)
from pydantic import Field

from grace.core.manifest import Manifest
from grace.core.names import origin_tags
from grace.pipelines.cron import utc_cron_schedule
from grace.pipelines.executor import run_executor
from grace.pipelines.labels import store_kind
from grace.resources.db.key_tables import KeyStatus, aware_utc
from grace.resources.keys.overdue import KEY_STATUS, OVERDUE_CHECK, OverdueFinding, primary_finding
from grace.resources.keys.vault import KeyVault
from grace.resources.tasks.builtin_handlers import rotate_and_rewrap
from grace.resources.wiring.dagster_resources import KeyVaultResource

ROTATE_KEYS_JOB = "rotate_keys"
KEYS_ORIGIN = "keys"  # grace/origin of key runs: they count against a quota like any routed task
KEYS_GROUP = "keys"
SECONDS_PER_DAY = 86_400


class RotateKeysConfig(Config):
    force: bool = Field(default=False, description="make a new primary version even if the current one is not due")


def key_status(vault: KeyVault, cron: str, now: datetime | None = None) -> dict:
    """Every version's status, age and rows, the primary's age, whether it is due (past rotate_after) and
    overdue (still primary after the rotation keys.cron should have made: the primary_not_overdue check's
    rule); never key material."""
    now = aware_utc(now)
    rows, known = vault.versions_in_use(), vault.versions()
    versions = [
        {
            "version": version.version,
            "status": version.status,
            "created_at": version.created_at.isoformat(timespec="seconds"),
            "age_days": round((now - version.created_at).total_seconds() / SECONDS_PER_DAY, 3),
            "rotate_after": version.rotate_after.isoformat(timespec="seconds"),
            "destroyed_at": version.destroyed_at.isoformat(timespec="seconds") if version.destroyed_at else None,
            "rows": rows.get(version.version, 0),
        }
        for version in known
    ]
    primary = next((version for version in known if version.status == KeyStatus.PRIMARY), None)
    return {
        "now": now.isoformat(timespec="seconds"),
        "kek": vault.kek_source,
        "primary": primary.version if primary else None,
        "primary_age_days": round((now - primary.created_at).total_seconds() / SECONDS_PER_DAY, 3) if primary else None,
        "primary_rotate_after": primary.rotate_after.isoformat(timespec="seconds") if primary else None,
        "primary_due": primary is not None and now > primary.rotate_after,
        "primary_overdue": not primary_finding(known, cron, now).passed,
        "versions": versions,
    }


def build_key_assets(manifest: Manifest) -> list[AssetsDefinition]:
    """key_versions (materialized by rotating and rewrapping) and key_status (ages, rows, the overdue check)."""
    batch = manifest.keys.rewrap_batch
    kinds = {"aes-gcm", store_kind(manifest)}

    @asset(
        group_name=KEYS_GROUP,
        owners=manifest.owners,
        kinds=kinds,
        description="The store's data key versions: a new primary when the current one is due (or config force), "
        f"then every encrypted column rewrapped to it in batches of {batch} rows, then old versions that no row "
        f"uses destroyed (the newest {manifest.keys.min_decryption_versions} are always kept).",
    )
    def key_versions(context: AssetExecutionContext, config: RotateKeysConfig, key_vault: KeyVaultResource):
        report = rotate_and_rewrap(key_vault.get(), config.force, batch)
        if report["rotated"]:
            context.log.info(f"new primary key version {report['primary']}")
        else:
            context.log.info(f"primary key version {report['primary']} is not due until {report['rotate_after']}")
        for column, rows in report["rewrapped"].items():
            context.log.info(f"{column}: {rows} rows rewrapped to version {report['primary']}")
        for version, reason in report["kept"].items():
            context.log.info(f"key version {version} kept: {reason}")
        return MaterializeResult(
            metadata={
                "rotated": report["rotated"],
                "primary": MetadataValue.int(report["primary"]),
                "rows_rewrapped": MetadataValue.int(sum(report["rewrapped"].values())),
                **{f"rewrapped/{column}": MetadataValue.int(rows) for column, rows in report["rewrapped"].items()},
                "destroyed": MetadataValue.text(", ".join(map(str, report["destroyed"])) or "none"),
                "kept": MetadataValue.json(report["kept"]),
            }
        )

    @asset(
        name=KEY_STATUS,
        group_name=KEYS_GROUP,
        owners=manifest.owners,
        kinds=kinds,
        deps=[key_versions],
        check_specs=[
            AssetCheckSpec(
                OVERDUE_CHECK,
                asset=KEY_STATUS,
                description="The primary key version is rotated on time: not still primary an hour after the "
                "first keys.cron tick at or after its rotate_after. Evaluated after every rotate_keys run, and by "
                "the keys_overdue sensor, so that a schedule that stopped shows up here.",
            )
        ],
        description="Per key version: status, age in days and rows under it; the primary's age and whether it "
        "is due. Materialized by every rotate_keys run, so its numbers plot over time. Never key material or "
        "the KEK.",
    )
    def key_status_asset(key_vault: KeyVaultResource) -> MaterializeResult:
        vault, now = key_vault.get(), aware_utc(None)
        finding = primary_finding(vault.versions(), manifest.keys.cron, now)
        return MaterializeResult(
            metadata=status_metadata(key_status(vault, manifest.keys.cron, now)), check_results=[overdue_check(finding)]
        )

    return [key_versions, key_status_asset]


def status_metadata(status: dict) -> dict:
    """Numeric metadata the UI plots over time: v<N>/age_days and v<N>/rows per live version."""
    metadata = {
        "kek": MetadataValue.text(status["kek"]),
        "versions": MetadataValue.int(len(status["versions"])),
        "primary_overdue": status["primary_overdue"],
    }
    if status["primary"] is not None:
        metadata["primary"] = MetadataValue.int(status["primary"])
        metadata["primary_age_days"] = MetadataValue.float(status["primary_age_days"])
        metadata["primary_rotate_after"] = MetadataValue.text(status["primary_rotate_after"])
    for version in status["versions"]:
        if version["status"] == KeyStatus.DESTROYED:
            continue
        metadata[f"v{version['version']}/age_days"] = MetadataValue.float(version["age_days"])
        metadata[f"v{version['version']}/rows"] = MetadataValue.int(version["rows"])
    return metadata


def overdue_check(finding: OverdueFinding) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=OVERDUE_CHECK,
        passed=finding.passed,
        severity=AssetCheckSeverity.ERROR,
        description=finding.description,
        metadata=finding.metadata,  # floats and text: Dagster records them as float and text metadata
    )


def build_rotate_keys_job(manifest: Manifest, key_assets: list[AssetsDefinition]) -> JobDefinition:
    return define_asset_job(
        ROTATE_KEYS_JOB,
        selection=AssetSelection.assets(*key_assets) | AssetSelection.checks_for_assets(*key_assets),
        executor_def=run_executor(manifest),
        # On the job, so runs launched from the UI carry them as scheduled ones do.
        tags=origin_tags(KEYS_ORIGIN, manifest.routing.origins),
        description="Rotates the data key when due (config force: now), rewraps every encrypted row to the "
        "primary, destroys versions no row uses, then records key_status.",
    )


def build_rotate_keys_schedule(manifest: Manifest, rotate_keys_job: JobDefinition) -> ScheduleDefinition:
    return utc_cron_schedule(
        "rotate_keys_schedule",
        rotate_keys_job,
        manifest.keys.cron,
        "Runs rotate_keys on keys.cron: rotation happens only when the primary is due.",
    )

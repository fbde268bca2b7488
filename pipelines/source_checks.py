"""deletes_not_held: an ERROR check on each watched folder, failing while a scan holds its deletes.

The folder's sensor reports it without a run whenever the hold begins or ends (sensors/folder.py);
executing it from the UI reads the store's hold the same way."""

from dagster import AssetCheckResult, AssetChecksDefinition, AssetCheckSeverity, AssetKey, asset_check

from grace.core.manifest import SourceConfig
from grace.core.names import DELETES_HELD_CHECK, source_asset_key
from grace.resources.wiring.dagster_resources import StoreResource


def build_deletes_held_check(source: SourceConfig) -> AssetChecksDefinition:
    @asset_check(
        asset=AssetKey(source_asset_key(source.name)),
        name=DELETES_HELD_CHECK,
        description=f"No deletes held for source '{source.name}': a scan that finds its folder missing, unreadable "
        "or empty, or that would delete more than max_delete_fraction of its documents, holds the deletes and "
        "fails this check until the folder comes back or `grace sources release` lets them through.",
    )
    def deletes_not_held(store: StoreResource) -> AssetCheckResult:
        held = store.get().holds.of(source.name)
        return AssetCheckResult(
            passed=held is None,
            severity=AssetCheckSeverity.ERROR,
            description=held.describe() if held else "no deletes held",
        )

    return deletes_not_held

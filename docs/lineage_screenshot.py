"""Takes docs/lineage.png: the lineage of index_status in the Dagster UI of a real `grace dev`.

    .venv/bin/python docs/lineage_screenshot.py      # needs Debian's chromium: apt-get install chromium

Copies grace.yaml and handlers/ into a temporary folder, starts `grace dev` there (SQLite, the
real model), drops three files, waits until they are indexed and index_status is reported, then
has headless Chromium take the picture. It also writes docs/lineage.json, the assets and edges
the picture shows: tests/dagster/test_lineage_picture.py fails when the code location's graph no longer
matches it, so the picture is retaken whenever the lineage changes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grace.core.manifest import Manifest, load_manifest  # noqa: E402
from tests.helpers.devserver import DevServer, free_port  # noqa: E402

PICTURED = "index_status"  # the picture is this asset's upstream lineage: the whole ingest story
PICTURE, GRAPH = ROOT / "docs" / "lineage.png", ROOT / "docs" / "lineage.json"
CHROMIUM_FLAGS = [  # the closed network refuses Chromium's background connections; see the machine notes
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
DOCUMENTS = {
    "whales.txt": "Humpback whales sing long, complex songs that carry across whole ocean basins.",
    "sourdough.md": "A sourdough starter is flour and water colonised by wild yeast and lactic bacteria.",
    "lighthouses.txt": "Lighthouse keepers trimmed wicks and wound clockwork so the lens kept turning all night.",
}


def pictured_graph(manifest: Manifest) -> dict:
    """The assets upstream of PICTURED (itself included) and the edges between them, sorted."""
    from grace.definitions import build_definitions

    graph = build_definitions(manifest).resolve_asset_graph()
    keys, frontier = set(), [key_of(PICTURED)]
    while frontier:
        key = frontier.pop()
        keys.add(key)
        frontier += [parent for parent in graph.get(key).parent_keys if parent not in keys]
    edges = sorted(
        [parent.to_user_string(), key.to_user_string()]
        for key in keys
        for parent in graph.get(key).parent_keys
        if parent in keys
    )
    return {"asset": PICTURED, "assets": sorted(key.to_user_string() for key in keys), "edges": edges}


def key_of(name: str):
    from dagster import AssetKey

    return AssetKey.from_user_string(name)


def wait_for_status(home: Path, manifest_path: Path, timeout: float) -> None:
    """Until every dropped file is indexed and index_status has been reported since."""
    from dagster import DagsterInstance

    from grace.api import stats

    deadline = time.monotonic() + timeout
    with DagsterInstance.from_config(str(home)) as instance:
        while time.monotonic() < deadline:
            total = stats(manifest_path)["total"]
            reported = instance.get_latest_materialization_event(key_of(PICTURED))
            if total["documents_active"] == len(DOCUMENTS) and total["index_coverage"] == 1.0 and reported:
                if reported.asset_materialization.metadata["total_embeddings"].value == total["total_embeddings"]:
                    return
            time.sleep(1)
    raise TimeoutError(f"the files were not indexed and reported in {timeout:.0f}s")


def take_picture(url: str, out: Path, chromium: str, profile: Path) -> None:
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=2100,700",
            "--virtual-time-budget=20000",  # lets the UI's queries settle before the shot
            f"--screenshot={out}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for the files to be indexed")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        sys.exit(f"no Chromium at {args.chromium}: install Debian's (apt-get install chromium) or pass --chromium")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shutil.copy(ROOT / "grace.yaml", root / "grace.yaml")
        shutil.copytree(ROOT / "handlers", root / "handlers")
        manifest = load_manifest(root / "grace.yaml")
        port, home = free_port(), root / "dagster_home"
        with DevServer(root / "grace.yaml", home, port, root / "dagster-dev.log"):
            inbox = manifest.sources[0].path
            for name, text in DOCUMENTS.items():
                (inbox / name).write_text(text + "\n")
            wait_for_status(home, root / "grace.yaml", args.timeout)
            url = f"http://127.0.0.1:{port}/assets/{PICTURED}?view=lineage&lineageScope=upstream&lineageDepth=10"
            take_picture(url, PICTURE, args.chromium, root / "chromium")
    GRAPH.write_text(json.dumps(pictured_graph(manifest), indent=1) + "\n")
    print(f"wrote {PICTURE.relative_to(ROOT)} ({PICTURE.stat().st_size} bytes) and {GRAPH.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

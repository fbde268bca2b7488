"""The README's lineage picture (docs/lineage.png) shows the code location's lineage as it is now.

docs/lineage_screenshot.py takes the picture in headless Chromium against a real `grace dev` and
records the assets and edges it shows in docs/lineage.json; this test rebuilds that graph from the
shipped grace.yaml, so changing the lineage without retaking the picture fails here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from grace.core.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("lineage_screenshot", ROOT / "docs" / "lineage_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pictured_lineage_is_the_code_locations_lineage():
    recorded = json.loads((ROOT / "docs" / "lineage.json").read_text())
    current = _screenshot_module().pictured_graph(load_manifest(ROOT / "grace.yaml"))
    assert recorded == current, (
        "the lineage changed: retake the picture with `.venv/bin/python docs/lineage_screenshot.py`"
    )
    assert "vector_index" in current["assets"] and ["vector_index", "index_status"] in current["edges"]


def test_the_picture_is_a_png_the_readme_shows():
    picture = ROOT / "docs" / "lineage.png"
    assert picture.read_bytes()[:8] == PNG_SIGNATURE and picture.stat().st_size > 20_000
    assert "](docs/lineage.png)" in (ROOT / "README.md").read_text()

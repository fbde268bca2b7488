"""Seconds from a file drop to the file being searchable, under a real `grace dev`.

    .venv/bin/python bench/freshness.py [--drops 12]

Starts `grace dev` (webserver + daemon, SQLite, real model) with a temporary
DAGSTER_HOME, drops one file at a time, and polls an in-process search (model already
loaded) every 0.2 s until the file is the top hit. Prints every latency and p50/p95.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grace.core.manifest import load_manifest  # noqa: E402
from grace.resources import build_resources  # noqa: E402
from grace.resources.search import Searcher  # noqa: E402
from tests.devserver import DevServer, free_port  # noqa: E402

TOPICS = [
    "glacier",
    "saxophone",
    "origami",
    "volcano",
    "lighthouse",
    "beekeeping",
    "submarine",
    "tango",
    "meteorite",
    "sourdough",
    "falconry",
    "cathedral",
    "hurricane",
    "chess",
    "canyon",
    "violin",
    "archery",
    "penguin",
    "telescope",
    "pottery",
]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drops", type=int, default=12, help=f"files to drop, at most {len(TOPICS)}")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        manifest_path = root / "grace.yaml"
        manifest_path.write_text("state_dir: state\nsources:\n  - {name: documents, path: inbox}\nindex: {shards: 4}\n")
        manifest = load_manifest(manifest_path)
        resources = build_resources(manifest)
        searcher = Searcher(resources["store"].get(), resources["vector_index"].get(), resources["embedder"].get())
        searcher.embedder.encode(["warm up"])
        latencies = []
        with DevServer(manifest_path, root / "dagster_home", free_port(), root / "dagster-dev.log"):
            time.sleep(6)  # let the first sensor tick see an empty folder
            for number, topic in enumerate(TOPICS[: args.drops]):
                name = f"{number:02d}-{topic}.txt"
                text = f"A detailed note about {topic}: its history, how {topic} works, and why people love {topic}."
                dropped = time.monotonic()
                (manifest.sources[0].path / name).write_text(text)
                while time.monotonic() - dropped < args.timeout:
                    hits = searcher.search(f"all about {topic}", k=1)
                    if hits and hits[0].path == name:
                        break
                    time.sleep(0.2)
                else:
                    raise TimeoutError(
                        f"{name} was not searchable after {args.timeout}s; see {root / 'dagster-dev.log'}"
                    )
                latencies.append(time.monotonic() - dropped)
                print(f"{name}: searchable after {latencies[-1]:.2f} s", flush=True)
    print(
        f"drops {len(latencies)}: p50 {statistics.median(latencies):.2f} s, p95 {percentile(latencies, 0.95):.2f} s, "
        f"min {min(latencies):.2f} s, max {max(latencies):.2f} s"
    )


if __name__ == "__main__":
    main()

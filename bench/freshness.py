"""Seconds from a file drop to the file being searchable, and to its shard being fully indexed, under `grace dev`.

    .venv/bin/python bench/freshness.py [--drops 12] [--backend onnx-int8|torch] [--json]

Starts `grace dev` (webserver + daemon, SQLite, the real model) with a temporary
DAGSTER_HOME, drops one file at a time, and polls an in-process search (model already
loaded) every 0.1 s until the file is the top hit, then until index_coverage is 1.0 with the
file in the index. Prints every latency, p50/p95, and with --json one object on the last line:
p50_s, p95_s (drop to searchable), p50_indexed_s, p95_indexed_s, drops, backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grace.core.manifest import load_manifest  # noqa: E402
from grace.resources.index.search import Searcher, index_stats  # noqa: E402
from grace.resources.wiring.services import open_searcher  # noqa: E402
from tests.helpers.devserver import DevServer, free_port  # noqa: E402

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
    parser.add_argument("--backend", choices=["onnx-int8", "torch"], help="embedding backend (default: grace.yaml's)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        manifest_path = root / "grace.yaml"
        embedding = f"embedding: {{backend: {args.backend}}}\n" if args.backend else ""
        manifest_path.write_text(
            f"state_dir: state\nsources:\n  - {{name: documents, path: inbox}}\nindex: {{shards: 4}}\n{embedding}"
        )
        manifest = load_manifest(manifest_path)
        latencies, indexed = [], []
        with DevServer(manifest_path, root / "dagster_home", free_port(), root / "dagster-dev.log"):
            searcher = open_searcher(manifest)  # once grace dev has made the key file
            searcher.embedder.encode(["warm up"])
            time.sleep(6)  # let the first sensor tick see an empty folder
            for number, topic in enumerate(TOPICS[: args.drops]):
                name = f"{number:02d}-{topic}.txt"
                text = f"A detailed note about {topic}: its history, how {topic} works, and why people love {topic}."
                dropped = time.monotonic()
                (manifest.sources[0].path / name).write_text(text)
                found = lambda topic=topic, name=name: first_hit(searcher, topic) == name  # noqa: E731
                wait(found, dropped, args.timeout, name, root)
                latencies.append(time.monotonic() - dropped)
                wait(lambda: fully_indexed(searcher), dropped, args.timeout, name, root)
                indexed.append(time.monotonic() - dropped)
                print(f"{name}: searchable after {latencies[-1]:.2f} s, indexed after {indexed[-1]:.2f} s", flush=True)
    figures = {
        "backend": manifest.embedding.backend,
        "drops": len(latencies),
        "p50_s": round(statistics.median(latencies), 2),
        "p95_s": round(percentile(latencies, 0.95), 2),
        "p50_indexed_s": round(statistics.median(indexed), 2),
        "p95_indexed_s": round(percentile(indexed, 0.95), 2),
    }
    print(
        f"drops {len(latencies)} ({figures['backend']}): searchable p50 {figures['p50_s']} s, "
        f"p95 {figures['p95_s']} s, "
        f"min {min(latencies):.2f} s, max {max(latencies):.2f} s; fully indexed p50 {figures['p50_indexed_s']} s, "
        f"p95 {figures['p95_indexed_s']} s (goals: p50 <= 3 s, p95 <= 6 s)"
    )
    if args.json:
        print(json.dumps(figures))


def first_hit(searcher: Searcher, topic: str) -> str | None:
    hits = searcher.search(f"all about {topic}", k=1)
    return hits[0].path if hits else None


def fully_indexed(searcher: Searcher) -> bool:
    return index_stats(searcher.store, searcher.index, searcher.embedder.model_id)["total"]["index_coverage"] == 1.0


def wait(condition, dropped: float, timeout: float, name: str, root: Path) -> None:
    while time.monotonic() - dropped < timeout:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{name}: condition not met after {timeout}s; see {root / 'dagster-dev.log'}")


if __name__ == "__main__":
    main()

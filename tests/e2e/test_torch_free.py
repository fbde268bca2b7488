"""With embedding.backend onnx-int8, a process that builds the code location, ticks a sensor, runs an
ingest and searches never imports torch, sentence-transformers or transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
from pathlib import Path

from tests.helpers.harness import Deployment

# No embedder given: the code location's own, from grace.yaml, as `grace dev` builds it.
deployment = Deployment(Path(sys.argv[1]), None, None, shards=1, embedding_backend="onnx-int8")
deployment.drop("volcano.txt", "Lava poured from the erupting volcano and ash closed the airport.")
[request] = deployment.tick()
assert deployment.run_job("ingest", int(request.partition_key)).success
[hit] = deployment.search("an eruption disrupted flights", k=1)
loaded = sorted(name for name in ("torch", "sentence_transformers", "transformers") if name in sys.modules)
print(json.dumps({"top": hit.path, "loaded": loaded, "backend": deployment.embedder.backend}))
"""


def test_the_onnx_backend_runs_the_whole_pipeline_without_torch(tmp_path, onnx_model_cache):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"top": "volcano.txt", "loaded": [], "backend": "onnx-int8"}

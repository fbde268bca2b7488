"""Run one whole sync (tick, ingest every shard, rebuild every shard) in its own process.

    python tests/crash_run.py ROOT fake|real

The crash tests set GRACE_FAILPOINT so that this process dies as kill -9 would, then
run it again without, and compare with a clean run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grace.resources.embedder import EmbedderResource  # noqa: E402
from tests.fakes import HashingEmbedderResource  # noqa: E402
from tests.harness import Deployment  # noqa: E402

root, kind = Path(sys.argv[1]), sys.argv[2]
embedder = EmbedderResource(batch_size=2) if kind == "real" else HashingEmbedderResource()
deployment = Deployment(root, None, embedder, shards=2, max_bytes="1MB")
deployment.tick()
for shard in range(2):
    assert deployment.ingest(shard).success
for shard in range(2):
    assert deployment.rebuild(shard).success

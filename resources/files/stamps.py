"""Checksums that a short-lived process need not recompute: a verified file leaves a stamp of its state.

Hashing a big file (an index shard, the ONNX model, the source weights) on every `grace search`
would cost more than the search. So a computed sha256 is written to a stamp together with the
file's size, mtime and inode, and a later process trusts the stamp while those are unchanged.
As with git's racy-clean rule, a stamp not written strictly after the file's mtime is not trusted:
a file rewritten within one timestamp tick cannot hide behind it. Damage that keeps size, mtime
and inode (bit rot) is caught only by a caller that passes trust=False.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stamped_sha256(path: Path, stamp: Path, trust: bool = True) -> str:
    """path's sha256, from the stamp if it still describes the file, else computed and stamped."""
    state = Path(path).stat()
    fingerprint = [state.st_size, state.st_mtime_ns, state.st_ino]
    if trust:
        try:
            recorded = json.loads(stamp.read_text())
            if recorded[:3] == fingerprint and stamp.stat().st_mtime_ns > state.st_mtime_ns:
                return str(recorded[3])
        except (OSError, ValueError, IndexError):
            pass  # no stamp yet, or one torn by a crash
    digest = file_sha256(path)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f"{stamp.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps([*fingerprint, digest]))
        os.replace(tmp, stamp)
    except OSError:
        pass  # a reader without write access hashes every time
    return digest

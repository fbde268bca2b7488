"""Named points where crash tests make a run die as kill -9 would (GRACE_FAILPOINT=name).

Unset, a failpoint is one dictionary lookup. The crash tests set it in a subprocess and
then prove that rerunning converges to what a clean run produces.
"""

import os
import signal


def failpoint(name: str) -> None:
    if os.environ.get("GRACE_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)

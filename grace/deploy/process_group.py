"""Stopping a process group: `grace drill`, the tests' `grace dev` and the Celery test's worker.

Each of them starts its child with start_new_session=True, so the child's pid is the id of a
process group that holds everything the child starts in turn; stop_group ends all of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

REAP_SECONDS = 10.0  # after SIGKILL: killed members linger until their parents (or init) reap them


def stop_group(process: subprocess.Popen, grace_seconds: float = 20.0) -> None:
    """SIGTERM the process group led by process, wait up to grace_seconds for all of it to end, SIGKILL the rest.

    Returns once the kernel has removed every member (or REAP_SECONDS after the SIGKILL), so that
    nothing the leader started outlives the caller.
    """
    group = process.pid  # the session leader's pid is the group's id
    signal_group(group, signal.SIGTERM)
    _wait_until_gone(process, grace_seconds)
    signal_group(group, signal.SIGKILL)
    process.wait(timeout=REAP_SECONDS)
    _wait_until_gone(process, REAP_SECONDS)


def _wait_until_gone(process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        process.poll()  # reaps the leader, whose zombie would keep the group alive
        if not group_alive(process.pid):
            return
        time.sleep(0.1)


def signal_group(group: int, signum: int) -> None:
    """Send signum to every process of the group; nothing when the group is gone."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def group_alive(group: int) -> bool:
    """Whether any process of the group still exists."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

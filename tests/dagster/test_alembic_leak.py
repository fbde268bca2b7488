"""The code server builds a DagsterInstance per sensor tick; with the code location loaded, that leaks nothing."""

from __future__ import annotations

import contextlib
import gc

from alembic.util import pyfiles
from dagster import DagsterInstance

import grace.definitions  # noqa: F401  (loading the code location applies the fix, as in the code server)

INSTANCES = 20


def exit_stacks() -> int:
    gc.collect()
    return sum(type(item) is contextlib.ExitStack for item in gc.get_objects())  # isinstance wakes lazy modules


def test_alembic_itself_leaks_an_exit_stack_per_resolution():
    """The measurement can see the leak: alembic's own function, unpatched, keeps one stack per call."""
    before = exit_stacks()
    for _ in range(5):
        pyfiles.coerce_resource_to_filename("dagster:_core/storage/alembic")
    assert exit_stacks() - before == 5


def test_instances_built_per_tick_leave_no_exit_stack_behind(tmp_path):
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        ref = instance.get_ref()

        def ticks(count: int) -> None:
            for _ in range(count):
                with DagsterInstance.from_ref(ref) as per_tick:  # what a sensor evaluation does
                    per_tick.get_runs(limit=1)

        ticks(5)  # one-time imports and caches (one stack among them)
        before = exit_stacks()
        ticks(INSTANCES)
        assert exit_stacks() - before == 0, "unfixed, alembic keeps two stacks per instance"

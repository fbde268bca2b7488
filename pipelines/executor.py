"""The executor of every Grace job, as grace.yaml's executor section chooses it."""

from __future__ import annotations

from dagster import ExecutorDefinition, in_process_executor

from grace.core.manifest import Manifest


def run_executor(manifest: Manifest) -> ExecutorDefinition:
    """in_process: a run's steps share its process (the model loads once per run); celery: each step is a
    Celery task on a dagster-celery worker, which loads this code location itself (docs/cluster.md)."""
    config = manifest.executor
    if config.kind == "in_process":
        return in_process_executor
    from dagster_celery import celery_executor  # imported only when chosen: it pulls Celery in

    return celery_executor.configured(
        {
            "broker": config.broker_source,  # env:NAME stays a reference: the UI never shows the URL
            "backend": config.backend,
            "config_source": {"task_default_queue": config.queue},
        },
        name="grace_celery",
    )

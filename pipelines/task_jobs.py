"""Task jobs: one per handler that grace.yaml's routes name, each running one task from the store.

A task run's op reads the task by id, runs its handler and stores the JSON result (or the
error). It never moves the task's status: the task_status sensor does, from the run records.
"""

import time
from typing import Any

from dagster import (
    Config,
    Failure,
    JobDefinition,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    job,
    op,
)
from pydantic import ValidationError

from grace.core.handler_api import BUILTIN_PAYLOADS, HandlerSpec, TaskContext
from grace.core.manifest import Manifest
from grace.core.names import TASK_JOB_PREFIX, task_job_name
from grace.core.task_model import TASK_OP, canonical_json
from grace.pipelines.executor import run_executor
from grace.resources.runs.heartbeat import TaskHeartbeatResource, heartbeat_resource_defs
from grace.resources.store.taskbook import ENDED_STATUSES, TaskRecord
from grace.resources.tasks.builtin_handlers import BUILTIN_IMPLEMENTATIONS
from grace.resources.tasks.project_handlers import project_handlers
from grace.resources.wiring.dagster_resources import (
    EmbedderResource,
    StoreResource,
    VectorIndexResource,
    build_resources,
)


class TaskConfig(Config):
    task_id: str


class HandlerFailed(Exception):
    """The handler could not run or did not return JSON; the message is what the task's error says."""


def build_task_jobs(manifest: Manifest) -> list[JobDefinition]:
    """One job per distinct handler in routing.routes, named task_<handler>; its one op is run_task."""
    run_task = build_task_op(manifest)
    jobs = []
    for handler_name in sorted(set(manifest.routing.routes.values())):
        types = sorted(kind for kind, name in manifest.routing.routes.items() if name == handler_name)

        @job(
            name=task_job_name(handler_name),
            # in_process (the default): one process per run; a task run's start-up time is the router's throughput.
            executor_def=run_executor(manifest),
            # Every resource bound here, since a job that binds one must bind all; the heartbeat
            # is bound only here, so sensor contexts built from the Definitions never open it.
            resource_defs={**build_resources(manifest), **heartbeat_resource_defs(manifest.store_url)},
            description=f"Runs one routed task with the '{handler_name}' handler (task types: {', '.join(types)}).",
        )
        def task_job():
            run_task()

        jobs.append(task_job)
    return jobs


def build_task_op(manifest: Manifest):
    @op(
        name=TASK_OP,
        out=Out(Nothing),
        description="Reads the task from the store, runs its handler and stores the JSON result or the error.",
    )
    def run_task(
        context: OpExecutionContext,
        config: TaskConfig,
        store: StoreResource,
        embedder: EmbedderResource,
        vector_index: VectorIndexResource,
        task_heartbeat: TaskHeartbeatResource,  # held for the run: run_health sees it alive
    ):
        book = store.get().tasks
        record = book.get(config.task_id)
        if record is None:
            raise Failure(
                description=f"no task {config.task_id!r} in the store; submit it with `grace submit` "
                "or a task file, then let the router launch its run"
            )
        if record.status in ENDED_STATUSES:
            # A late retry of a run whose task already ended must not run it again nor overwrite its outcome.
            raise Failure(
                description=f"task {record.task_id} already ended {record.status}; "
                "a task runs to its end once: submit it again to run it anew"
            )
        handler_name = context.job_name.removeprefix(TASK_JOB_PREFIX)
        services = {
            "store": store.get(),
            "embedder": embedder.get(),
            "vector_index": vector_index.get(),
            "instance": context.instance,
        }
        task_context = TaskContext(record.task(), manifest, context.run_id, context.log, services)
        started = time.perf_counter()
        try:
            result, encoded = run_handler(record, handler_name, manifest, task_context)
        except (Exception, SystemExit) as error:  # a handler's exit() is its error too, not a lost run
            message = f"{type(error).__name__}: {error}"
            book.record_outcome(record.task_id, error=message)
            raise Failure(description=f"task {record.task_id} ({handler_name}) failed: {message}") from error
        handler_ms = round((time.perf_counter() - started) * 1000)
        book.record_outcome(record.task_id, result=result)
        return Output(
            None,
            metadata={
                "task_id": record.task_id,
                "handler": handler_name,
                "handler_ms": MetadataValue.int(handler_ms),
                "result_bytes": MetadataValue.int(len(encoded)),
            },
        )

    return run_task


def run_handler(record: TaskRecord, handler_name: str, manifest: Manifest, context: TaskContext) -> tuple[Any, bytes]:
    """(result, its canonical JSON) of the task's handler; raises whatever stopped it."""
    if record.handler != handler_name:
        raise HandlerFailed(
            f"task {record.task_id} is routed to handler '{record.handler}', not '{handler_name}'; "
            f"launch it with job {task_job_name(record.handler)}"
        )
    function, payload_model = resolve_handler(handler_name, manifest)
    payload: Any = record.task().payload
    if payload_model is not None:
        try:
            payload = payload_model.model_validate(payload, context={"manifest": manifest})
        except ValidationError as error:
            raise HandlerFailed(f"the payload no longer fits handler '{handler_name}': {error}") from None
    result = function(payload, context)
    try:
        encoded = canonical_json(result)
    except (TypeError, ValueError) as error:
        raise HandlerFailed(
            f"handler '{handler_name}' returned {type(result).__name__}, which is not JSON: {error}"
        ) from None
    return result, encoded


def resolve_handler(name: str, manifest: Manifest) -> tuple[Any, Any]:
    """(function, payload model or None) of a built-in or an allowlisted project handler."""
    if name in BUILTIN_IMPLEMENTATIONS:
        return BUILTIN_IMPLEMENTATIONS[name], BUILTIN_PAYLOADS[name]
    spec: HandlerSpec | None = project_handlers(manifest.routing.handlers).get(name)
    if spec is None:
        raise HandlerFailed(
            f"no handler '{name}' in {manifest.routing.handlers} any more; restore it or change grace.yaml's routes"
        )
    return spec.function, spec.payload

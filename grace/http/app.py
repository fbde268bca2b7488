"""The seed's HTTP API on Starlette: ingest, index stats, search, intents and tasks, routing stats, keys, health.

A front door, never a second pipeline: ingested content becomes a file in a watched folder, intents
and tasks go to the router's store, and search asks the same Searcher as `grace search`, kept warm.
`grace serve` (serve.py) runs the app on uvicorn; build_app is what it and the tests serve.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from grace.core.index_config import SearchMode
from grace.core.manifest import Manifest
from grace.core.search_filter import SearchFilter, UnknownSource
from grace.core.secrets import SecretError, parse_secret_ref, resolve_secret
from grace.core.task_model import TaskRejected
from grace.http.ingest import ID_PATTERN, IngestTarget
from grace.http.io import ApiError, TokenGate, error_response, read_json, validated
from grace.resources.index.search import Searcher, SearchHit, hit_dict, index_stats
from grace.resources.store.taskbook import RECEIVED, DuplicateTask
from grace.resources.tasks.project_handlers import accept_task

LOG = logging.getLogger("grace.http")
QUARANTINED_LISTED = 100  # a hostile drop can quarantine thousands; the stats answer stays small
INTENT_FIELDS = {"task_id": "intent_id", "type": "domain"}  # an intent's problems, named as the intent names them


class _Body(BaseModel):
    # strict: JSON's types as sent ("5" is not a number); unknown fields are errors, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class IngestRequest(_Body):
    content: str = Field(min_length=1, description="the text to ingest")
    title: str = Field(max_length=1000, description="names the file: a slug of it, plus the id")
    artifact_type: str = Field(default="document", min_length=1, max_length=64)
    actor: str = Field(default="api", min_length=1, max_length=64)


class SearchRequest(_Body):
    query: str = Field(min_length=1, max_length=10_000)
    top_k: int = Field(default=5, ge=1, le=1000)
    mode: SearchMode | None = Field(default=None, description="hybrid, dense or lexical; default: search.mode")
    filter: SearchFilter | None = Field(default=None, description="what hits may be: docs/search.md#filters")

    @field_validator("query")
    @classmethod
    def _words(cls, query: str) -> str:
        if not query.strip():
            raise ValueError("is only whitespace; send some words to search for")
        return query


class Services:
    """What the app serves from: the manifest, one warm Searcher, the ingest target."""

    def __init__(
        self, manifest: Manifest, config: Path, target: IngestTarget, searcher: Searcher, dagster_home: Path | None
    ):
        self.manifest, self.config, self.target = manifest, config, target
        self.searcher, self.dagster_home = searcher, dagster_home

    def search(
        self, query: str, k: int, mode: SearchMode | None = None, only: SearchFilter | None = None
    ) -> list[SearchHit]:
        try:
            if only is not None:
                only.check_sources([source.name for source in self.manifest.sources])
            return self.searcher.search(query, k, mode, only)
        except UnknownSource as error:
            raise ApiError(422, str(error), "filter.source") from None

    def warm_up(self) -> None:
        """Load the model and map every shard's index now, so that the first request is as fast as the rest."""
        self.search("warm up", 1)


def build_app(
    manifest: Manifest, config: Path, searcher: Searcher | None = None, dagster_home: Path | None = None
) -> Starlette:
    """The API for the manifest at config; searcher defaults to the manifest's own (open_searcher).

    Raises ServeRefused when grace.yaml's ingest source takes no .md or .txt file, SecretError when
    api.token is set but cannot be read.
    """
    from grace.resources.wiring.services import open_searcher

    target = IngestTarget(manifest)  # first: a source that takes no .md or .txt stops the start before the store opens
    services = Services(manifest, Path(config), target, searcher or open_searcher(manifest), dagster_home)
    middleware = []
    if manifest.api.token is not None:
        reference = parse_secret_ref(manifest.api.token)
        middleware.append(Middleware(TokenGate, token=resolve_secret(reference), reference=reference))

    @asynccontextmanager
    async def lifespan(_app: Starlette):
        await run_in_threadpool(services.warm_up)
        try:
            yield
        finally:
            if searcher is None:  # opened here, so closed here
                services.searcher.store.dispose()

    return Starlette(
        routes=_routes(services),
        middleware=middleware,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            SQLAlchemyError: _store_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )


def _routes(services: Services) -> list[Route]:
    manifest = services.manifest
    max_body = int(manifest.api.max_body_bytes)

    async def health(_request: Request) -> JSONResponse:
        model_id = await run_in_threadpool(services.searcher.store.serving.model, services.searcher.embedder.model_id)
        return JSONResponse(
            {
                "status": "ok",
                "model_id": model_id,
                "store": "ok",
                "shards": manifest.index.shards,
                "version": version("grace"),
            }
        )

    async def ingest(request: Request) -> JSONResponse:
        body = validated(IngestRequest, await read_json(request, max_body))
        identity, path, size = await run_in_threadpool(services.target.write, body.content, body.title)
        return JSONResponse(
            {
                "id": identity,
                "source": services.target.source.name,
                "path": path,
                "bytes": size,
                "status": "written",
                "artifact_type": body.artifact_type,
                "actor": body.actor,
            },
            status_code=201,
        )

    async def knowledge(request: Request) -> JSONResponse:
        identity = request.path_params["id"]
        found = await run_in_threadpool(_document, services, identity) if ID_PATTERN.match(identity) else None
        if found is None:
            raise ApiError(404, f"no file written by POST /api/knowledge/ingest has id {identity!r}", "id")
        return JSONResponse(found)

    async def stats(_request: Request) -> JSONResponse:
        searcher = services.searcher
        found = await run_in_threadpool(index_stats, searcher.store, searcher.index, searcher.embedder.model_id)
        return JSONResponse(_seed_stats(found))

    async def search(request: Request) -> JSONResponse:
        body = validated(SearchRequest, await read_json(request, max_body))
        hits = await run_in_threadpool(services.search, body.query, body.top_k, body.mode, body.filter)
        mode = body.mode or services.searcher.mode
        results = [hit_dict(hit) for hit in hits]
        return JSONResponse({"query": body.query, "top_k": body.top_k, "mode": mode, "results": results})

    async def submit_intent(request: Request) -> JSONResponse:
        data = await read_json(request, max_body)
        if not isinstance(data, dict):
            raise ApiError(422, "an intent is a JSON object with intent_id, goal, domain, sla_ms and priority")
        if "type" in data:
            raise ApiError(422, "an intent has no type: its domain routes it; POST whole tasks to /api/tasks", "type")
        if "intent_id" not in data:
            raise ApiError(422, "intent_id: is required", "intent_id")
        task = await run_in_threadpool(_accept, services, data, INTENT_FIELDS)
        return JSONResponse({"intent_id": task.task_id, **_accepted(task)}, status_code=202)

    async def submit_task(request: Request) -> JSONResponse:
        task = await run_in_threadpool(_accept, services, await read_json(request, max_body), {})
        return JSONResponse(_accepted(task), status_code=202)

    async def get_task(request: Request) -> JSONResponse:
        task_id = request.path_params["id"]
        record = await run_in_threadpool(services.searcher.store.tasks.get, task_id)
        if record is None:
            raise ApiError(404, f"no task has id {task_id!r}", "id")
        return JSONResponse(record.as_dict())

    async def routing(_request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(_routing_stats, services))

    async def keys(_request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(_key_status, services))

    return [
        Route("/health", health, methods=["GET"]),
        Route("/api/knowledge/ingest", ingest, methods=["POST"]),
        Route("/api/knowledge/{id}", knowledge, methods=["GET"]),
        Route("/api/vectors/index/stats", stats, methods=["GET"]),
        Route("/api/vectors/search", search, methods=["POST"]),
        Route("/api/intents/submit", submit_intent, methods=["POST"]),
        Route("/api/tasks", submit_task, methods=["POST"]),
        Route("/api/tasks/{id}", get_task, methods=["GET"]),
        Route("/api/htm/routing/stats", routing, methods=["GET"]),
        Route("/api/keys/status", keys, methods=["GET"]),
    ]


def _seed_stats(stats: dict) -> dict:
    """index_stats in the seed's shape: its top-level names first, then Grace's detail."""
    total = stats["total"]
    return {
        "backend": "annoy",
        "total_vectors": total["total_embeddings"],
        "indexed_embeddings": total["indexed_embeddings"],
        "total_embeddings": total["total_embeddings"],
        "index_coverage": total["index_coverage"],
        "pending": total["pending"],
        "tombstoned": total["tombstoned"],
        "model_id": stats["model_id"],
        "documents": {name: total[f"documents_{name}"] for name in ("active", "pending", "quarantined", "deleted")},
        "shards": stats["shards"],
        "quarantined": stats["quarantined"][:QUARANTINED_LISTED],  # documents.quarantined has the count
        "reembedding": stats["reembedding"],
        "not_read": stats["not_read"],
    }


def _document(services: Services, identity: str) -> dict | None:
    """GET /api/knowledge/{id}: the API's file with this id and where its document stands; None if unknown."""
    from grace.resources.index.document_progress import document_status

    target, searcher = services.target, services.searcher
    source = target.source
    if source is None:
        return None
    path = target.on_disk(identity)
    if path is None:  # gone from the folder: the store may still know it, as deleted
        endings = tuple(f"-{identity}{extension}" for extension in (".md", ".txt"))
        known = searcher.store.ledger.paths_ending(source.name, target.folder, endings)
        if not known:
            return None
        path = known[-1]
    model_id = searcher.store.serving.model(searcher.embedder.model_id)
    status = document_status(searcher.store, searcher.index, model_id, source.name, path)
    found = {"status": "waiting", "reason": None, "chunks": 0, "searchable": False, "indexed": False}
    if status is not None:
        found = status.as_dict()
    return {"id": identity, "source": source.name, "path": path, **found}


def _accept(services: Services, data: Any, renamed: dict[str, str]):
    """Validate a task or intent against grace.yaml and store it as received; the router sensor runs it."""
    try:
        task = accept_task(data, services.manifest)
        services.searcher.store.tasks.add(task, "api")
    except DuplicateTask as duplicate:
        where, message = duplicate.problems[0]
        raise ApiError(409, f"{renamed.get(where, where)}: {message}", renamed.get(where, where)) from None
    except TaskRejected as rejected:
        problems = [(renamed.get(where, where), message) for where, message in rejected.problems]
        field = problems[0][0] if problems[0][0][:1] != "(" else None
        raise ApiError(422, "; ".join(f"{where}: {message}" for where, message in problems), field) from None
    return task


def _accepted(task) -> dict:
    return {
        "task_id": task.task_id,
        "type": task.type,
        "origin": task.origin,
        "status": RECEIVED,  # as stored: the router queues it as a run at its next tick
        "priority": task.priority,
        "data_size_bytes": task.data_size_bytes,
        "sla_ms": task.sla_ms,
    }


def _routing_stats(services: Services) -> dict:
    from grace.api import NoInstance, routing_stats

    try:
        return routing_stats(services.config, services.dagster_home)
    except NoInstance as missing:
        raise ApiError(503, str(missing)) from None


def _key_status(services: Services) -> dict:
    from grace.api import key_status
    from grace.resources.db.key_tables import KeyVaultError

    try:
        return key_status(services.config)
    except (SecretError, KeyVaultError) as error:  # a KEK missing, unsafe or wrong
        LOG.warning("GET /api/keys/status: %s", error)
        raise ApiError(503, f"the key status needs the KEK: {error}") from None


async def _api_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error_response(error.status, error.message, error.field)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        message = f"no endpoint {request.url.path}; see docs/http-api.md for the endpoints"
    elif error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed or 'another method'}"
    else:
        message = str(error.detail)
    return error_response(error.status_code, message, headers=error.headers)


async def _store_error(request: Request, error: Exception) -> JSONResponse:
    # The server's log gets the database's own words; the client, which may not own the server, gets none.
    LOG.error("%s %s: the store failed: %s", request.method, request.url.path, str(error).splitlines()[0])
    return error_response(
        503, "the store failed; see the server's log, check the store in grace.yaml and that its database is running"
    )


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    LOG.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return error_response(500, "internal error; see the server's log")

"""The HTTP API's edges: bodies read under a size cap, lenient JSON, validation errors by field, the token gate.

Every error leaves as JSON: {"error": "<what is wrong and how to fix it>", "field": "<dotted field or null>"}.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from grace.core.secrets import SecretError, SecretRef, decode_key

Model = TypeVar("Model", bound=BaseModel)
OPEN_PATHS = {("GET", "/health")}  # answered without a token, so a monitor needs no secret


class ApiError(Exception):
    """An error response: status, a message that says how to fix it, and the field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def error_response(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body parsed as JSON, whatever its Content-Type (curl -d labels JSON as form data).

    413 past max_bytes (by Content-Length, or while reading a body without one), 400 if it is
    not UTF-8 JSON.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"Content-Length {declared!r} is not a number of bytes")
        if int(declared) > max_bytes:
            raise ApiError(413, _too_large(int(declared), max_bytes))
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > max_bytes:
            raise ApiError(413, _too_large(len(body), max_bytes, at_least=True))
    if not body.strip():
        raise ApiError(400, "the request has no body; send a JSON object")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ApiError(400, f"the body is not UTF-8 (byte {error.start}); send UTF-8 JSON") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise ApiError(
            400, f"the body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except ValueError as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None


def validated(model: type[Model], data: Any) -> Model:
    """data checked against model; a 422 ApiError naming the first bad field (and listing every problem)."""
    if not isinstance(data, dict):
        raise ApiError(422, f"the body must be a JSON object, not {_json_type(data)}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = [_problem(item) for item in error.errors(include_url=False)]
        raise ApiError(422, "; ".join(f"{where}: {message}" for where, message in problems), problems[0][0]) from None


def _problem(item: dict) -> tuple[str, str]:
    where = ".".join(str(part) for part in item["loc"]) or None
    kind = item["type"]
    if kind == "missing":
        return where, "is required"
    if kind == "extra_forbidden":
        return where, "is not a field of this request; check its spelling"
    if kind == "string_unicode":
        return where, "is not valid Unicode (it holds a lone surrogate, such as \\ud800); send UTF-8 text"
    message = item["msg"].removeprefix("Value error, ")
    if kind.endswith("_type"):
        message += f" (got {_json_type(item['input'])})"
    return where, message


def _json_type(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _too_large(size: int, cap: int, at_least: bool = False) -> str:
    amount = f"more than {cap} bytes" if at_least else f"{size} bytes"
    return (
        f"the body is {amount}, over api.max_body_bytes ({cap}); send less, or raise api.max_body_bytes in grace.yaml"
    )


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON; use a number or null")


class TokenGate:
    """ASGI middleware: every request but GET /health must carry `Authorization: Bearer <token>`.

    The token is api.token's key (base64, standard or URL-safe); it is compared in constant time.
    """

    def __init__(self, app: ASGIApp, token: bytes, reference: SecretRef):
        self.app, self.token, self.reference = app, token, reference

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        problem = self._problem(Headers(scope=scope).get("authorization"))
        if problem is None:
            await self.app(scope, receive, send)
            return
        response = error_response(401, problem, "Authorization", {"WWW-Authenticate": 'Bearer realm="grace"'})
        await response(scope, receive, send)

    def _problem(self, header: str | None) -> str | None:
        scheme, _, presented = (header or "").partition(" ")
        if not header or scheme.lower() != "bearer" or not presented.strip():
            return "this server needs a token: send the header `Authorization: Bearer <api.token>`"
        try:
            key = decode_key(presented.strip(), self.reference)
        except SecretError:
            key = b""
        if not hmac.compare_digest(key, self.token):
            return "the bearer token is wrong; send the key that grace.yaml's api.token names"
        return None

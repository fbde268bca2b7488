"""A real uvicorn serving a Grace HTTP API app on 127.0.0.1, on a thread of the test process; and a raw client."""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

import uvicorn

from tests.helpers.devserver import free_port


class ThreadedServer:
    """uvicorn.Server on a free loopback port, in a thread; a context manager whose exit re-raises the
    server thread's exception, if it had one."""

    def __init__(self, app, log_level: str = "warning"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level=log_level, lifespan="on")
        self.server = uvicorn.Server(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="uvicorn-test", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as error:  # SystemExit from a failed startup too
            self.error = error

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"uvicorn did not start on port {self.port}: {self.error!r}")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "uvicorn did not stop"
        if self.error is not None and not (isinstance(self.error, SystemExit) and self.error.code in (0, None)):
            raise self.error


class Answer:
    """A response: status, headers (lower-case names) and the body, decoded as JSON when it is JSON."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.raw = status, headers, body
        self.json: Any = None
        if headers.get("content-type", "").startswith("application/json"):
            self.json = json.loads(body)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.raw[:300]!r})"


def call(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    chunks: list[bytes] | None = None,
    timeout: float = 60.0,
) -> Answer:
    """One request: body as JSON (with a JSON Content-Type), raw bytes as they are, or chunks with chunked encoding."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    sent_headers = dict(headers or {})
    if body is not None:
        raw = json.dumps(body).encode()
        sent_headers.setdefault("Content-Type", "application/json")
    try:
        if chunks is not None:
            connection.request(method, path, iter(chunks), sent_headers, encode_chunked=True)
        else:
            connection.request(method, path, raw, sent_headers)
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()

"""A client of a running `grace serve`, on the standard library only: found through <state_dir>/api.json.

`grace search` asks the warm server first and searches locally when none answers; it must stay
cheap to import, so nothing here loads the store, numpy or the model.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from grace.core.manifest import Manifest

DISCOVERY_FILE = "api.json"  # in state_dir: {"url", "pid", "token_required"} while a server runs
CONNECT_TIMEOUT_SECONDS = 0.3  # a loopback connect takes well under a millisecond; nobody listening is a refusal
READ_TIMEOUT_SECONDS = 10.0


class ApiUnavailable(Exception):
    """The server did not answer, or not with what was asked; the caller falls back to local work."""


def discovery_path(manifest: Manifest) -> Path:
    return manifest.state_dir / DISCOVERY_FILE


def read_discovery(manifest: Manifest) -> dict | None:
    """api.json's content if it names a live process; None if there is none, it is unreadable, or its pid is gone."""
    try:
        found = json.loads(discovery_path(manifest).read_text())
        pid, url = int(found["pid"]), str(found["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {**found, "pid": pid, "url": url} if pid_alive(pid) else None


def running_server(manifest: Manifest) -> str | None:
    """The URL of the `grace serve` that serves this manifest's state dir, if its process is alive."""
    found = read_discovery(manifest)
    return found["url"] if found else None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def api_token(manifest: Manifest) -> str | None:
    """The bearer token that api.token names (its key, URL-safe base64), or None when the API needs none."""
    if manifest.api.token is None:
        return None
    from grace.core.secrets import resolve_secret

    return base64.urlsafe_b64encode(resolve_secret(manifest.api.token)).decode()


def request_json(
    url: str,
    method: str,
    path: str,
    body: dict | None = None,
    token: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    read_timeout: float = READ_TIMEOUT_SECONDS,
) -> tuple[int, object]:
    """(status, decoded JSON) of one request; ApiUnavailable if the server cannot be reached or answers non-JSON.

    The connect timeout is short and the read timeout long: a server that is not there is found out
    at once, while a search that takes a while still gets its answer.
    """
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=connect_timeout)
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.connect()
        connection.sock.settimeout(read_timeout)
        connection.request(method, path, data, headers)
        response = connection.getresponse()
        payload = response.read()
        return response.status, json.loads(payload)
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise ApiUnavailable(f"{method} {url}{path}: {type(error).__name__}: {error}") from None
    finally:
        connection.close()


def remote_search(
    url: str, query: str, k: int, token: str | None = None, mode: str | None = None, only: dict | None = None
) -> list[dict]:
    """The k best hits from the server at url that pass the filter only (SearchFilter's fields, as JSON),
    as `grace search --json` prints them (hit_dict)."""
    body = {"query": query, "top_k": k} | ({"mode": mode} if mode else {}) | ({"filter": only} if only else {})
    status, answer = request_json(url, "POST", "/api/vectors/search", body, token)
    if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
        raise ApiUnavailable(f"POST {url}/api/vectors/search answered {status}: {answer}")
    return answer["results"]

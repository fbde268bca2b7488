"""grace.yaml's `api` section: where `grace serve` (the HTTP API) listens and what it accepts."""

from __future__ import annotations

from pydantic import BaseModel, ByteSize, ConfigDict, Field

from grace.core.secrets import SecretReference

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ApiConfig(BaseModel):
    """The seed's HTTP API: ingest, search, index stats, intents, tasks, routing stats, keys, health."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address `grace serve` binds; anything but loopback needs `grace serve --allow-remote` and token",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="port of the HTTP API")
    with_dev: bool = Field(default=True, description="true: `grace dev` serves the HTTP API beside Dagster")
    max_body_bytes: ByteSize = Field(
        default=ByteSize(1_048_576),
        gt=0,
        le=64 * 1024 * 1024,
        description="requests with a larger body get 413, e.g. 1MB or 512KiB (at most 64MiB)",
    )
    ingest_source: str | None = Field(
        default=None,
        description="the source whose folder POST /api/knowledge/ingest writes into; default: the first source",
    )
    token: SecretReference | None = Field(
        default=None,
        description="API token (env:NAME or file:PATH, mode 0600): every request must send "
        "`Authorization: Bearer <token>`; required to bind a non-loopback address",
    )

"""grace.yaml's `executor` section: where the steps of Grace's runs execute.

in_process (the default) runs every step of a run in its run worker. celery hands each step to a
dagster-celery worker through a broker (RabbitMQ), so steps spread over machines; see docs/cluster.md.
A broker URL with a password lives in an environment variable (broker: env:NAME), never in grace.yaml.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grace.core.secrets import ENV_NAME_PATTERN, ENV_PREFIX

BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", "redis", "rediss")
QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
CELERY_ONLY = {"broker", "backend", "queue"}


class ExecutorConfig(BaseModel):
    """How a run's steps execute: in the run worker, or as Celery tasks on worker machines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["in_process", "celery"] = Field(
        default="in_process",
        description="in_process: every step in the run's own process; celery: each step on a dagster-celery worker",
    )
    broker: str = Field(
        default="pyamqp://guest@127.0.0.1:5672//",
        description="celery: the broker URL without a password, e.g. pyamqp://guest@rabbitmq.internal:5672//, "
        "or env:NAME for a URL with one, read from that environment variable when a run starts",
    )
    backend: str = Field(
        default="rpc://", min_length=1, description="celery: the result backend; rpc:// returns results over the broker"
    )
    queue: str = Field(
        default="dagster",
        pattern=QUEUE_PATTERN,
        description="celery: the queue that steps are sent to; start every worker with `-q` and this name",
    )

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, url: str) -> str:
        if url.startswith(ENV_PREFIX):
            if not ENV_NAME_PATTERN.match(url.removeprefix(ENV_PREFIX)):
                raise ValueError("after env: comes the name of an environment variable: letters, digits and _")
            return url
        parts = urlsplit(url)
        if parts.scheme not in BROKER_SCHEMES:
            raise ValueError(
                f"{url.split('://')[0]!r} is not a broker; use e.g. pyamqp://guest@rabbitmq.internal:5672//"
            )
        if parts.password is not None:
            raise ValueError(
                "must not hold a password (the part after user:); put the whole URL in an environment "
                "variable and set broker: env:NAME"
            )
        return url

    @model_validator(mode="after")
    def _celery_settings_need_celery(self) -> ExecutorConfig:
        if self.kind == "in_process" and self.model_fields_set & CELERY_ONLY:
            raise ValueError("broker, backend and queue apply to kind: celery only; set kind: celery or drop them")
        return self

    @property
    def broker_source(self) -> str | dict[str, str]:
        """The broker as Dagster config: the URL, or {"env": NAME}, which Dagster reads when the run starts."""
        if self.broker.startswith(ENV_PREFIX):
            return {"env": self.broker.removeprefix(ENV_PREFIX)}
        return self.broker

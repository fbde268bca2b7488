"""An example project handler: routes in grace.yaml may name any @handler function in this folder."""

from pydantic import BaseModel, ConfigDict, Field

from grace.core.handler_api import TaskContext, handler


class EchoPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(max_length=10_000)
    sleep_ms: int = Field(default=0, ge=0, le=600_000, description="wait this long first (to try SLAs)")


@handler("echo", payload=EchoPayload)
def echo(payload: EchoPayload, context: TaskContext) -> dict:
    """Answers with the message it was given, after sleep_ms."""
    import time

    time.sleep(payload.sleep_ms / 1000)
    context.log.info(f"task {context.task.task_id}: echoing {len(payload.message)} characters")
    return {"message": payload.message, "origin": context.task.origin}

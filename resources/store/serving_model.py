"""Which model's vectors search answers from while the store re-embeds for another.

Changing embedding.model or embedding.backend must never blank search: until every live chunk
has a vector of the new (target) model, search keeps answering from the model it served before,
encoding queries with that model. The ingest run that completes the target's vectors promotes it.
"""

from __future__ import annotations

from sqlalchemy import Engine, func, insert, select, update

from grace.resources.db.schema import chunks, documents, store_settings
from grace.resources.db.work_left import has_embedding

SERVING_MODEL = "serving_model"


class ServingModel:
    """store.serving: the serving model and the progress of a re-embedding."""

    def __init__(self, engine: Engine, writer: Engine):
        self.engine = engine
        self.writer = writer

    def model(self, target_model_id: str) -> str:
        """The model search answers from: the last one promoted, or the target on a store that has none."""
        with self.engine.connect() as connection:
            value = connection.execute(
                select(store_settings.c.value).where(store_settings.c.name == SERVING_MODEL)
            ).scalar_one_or_none()
        return value or target_model_id

    def chunks_lacking(self, model_id: str) -> int:
        """Live chunks of active documents without a vector of model_id: a re-embedding's work left."""
        with self.engine.connect() as connection:
            return connection.execute(_lacking(model_id, select(func.count()))).scalar_one()

    def promote_when_complete(self, target_model_id: str) -> str | None:
        """Serve target_model_id once every live chunk has its vector; return the model it replaced, if any."""
        with self.writer.begin() as connection:
            current = connection.execute(
                select(store_settings.c.value).where(store_settings.c.name == SERVING_MODEL).with_for_update()
            ).scalar_one_or_none()
            if current == target_model_id:
                return None
            if (
                current is not None
                and connection.execute(_lacking(target_model_id, select(chunks.c.id)).limit(1)).first()
            ):
                return None
            if current is None:
                connection.execute(insert(store_settings).values(name=SERVING_MODEL, value=target_model_id))
            else:
                connection.execute(
                    update(store_settings).where(store_settings.c.name == SERVING_MODEL).values(value=target_model_id)
                )
        return current


def _lacking(model_id: str, columns):
    return columns.select_from(chunks.join(documents, documents.c.id == chunks.c.document_id)).where(
        documents.c.status == "active", ~has_embedding(model_id)
    )

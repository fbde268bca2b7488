"""Which shard each document and chunk belongs to, stored so that a shard is an index look-up.

A document's shard is shard_key % the shard count (index.shards in grace.yaml). The store keeps
the count it computed the shard columns with; a store opened with another count is re-laid out
once, in one transaction, and its layout epoch moves on so that no index built before is trusted.
"""

from __future__ import annotations

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from grace.core.process_caches import SHARD_LAYOUTS
from grace.resources.db.schema import chunks, documents, removed_chunks, shard_layout


class ShardLayout:
    """store.layout: the shard columns agree with the shard count a caller asks for."""

    def __init__(self, engine: Engine, writer: Engine):
        self.engine = engine
        self.writer = writer  # the same pool; its transactions take SQLite's write lock at BEGIN

    def epoch(self, shards: int) -> int:
        """The epoch of the layout for this shard count, re-laying the store out first if needed.

        Checked once per process and shard count (SHARD_LAYOUTS): grace.yaml names one count per
        store, and changing it means restarting Grace."""
        if shards < 1:
            raise ValueError(f"the shard count must be at least 1, got {shards}")
        known = SHARD_LAYOUTS.get((self.engine.url, shards))
        if known is not None:
            return known
        with self.engine.connect() as connection:  # a plain read first: searches never wait on writers
            row = connection.execute(select(shard_layout)).first()
        if row is not None and row.shards == shards:
            return SHARD_LAYOUTS.put((self.engine.url, shards), row.epoch)
        for _attempt in range(3):
            try:
                epoch = _lay_out(self.writer, shards)
                break
            except IntegrityError:  # another process created the layout row first: read it again
                continue
        else:
            raise RuntimeError("could not record the store's shard layout; is another Grace re-laying it out?")
        return SHARD_LAYOUTS.put((self.engine.url, shards), epoch)


def _lay_out(writer: Engine, shards: int) -> int:
    with writer.begin() as connection:
        row = connection.execute(select(shard_layout).with_for_update()).first()
        if row is not None and row.shards == shards:
            return row.epoch
        connection.execute(update(documents).values(shard=documents.c.shard_key % shards))
        shard_of_document = select(documents.c.shard).where(documents.c.id == chunks.c.document_id)
        connection.execute(update(chunks).values(shard=shard_of_document.scalar_subquery()))
        connection.execute(delete(removed_chunks))
        epoch = 1 if row is None else row.epoch + 1
        if row is None:
            connection.execute(insert(shard_layout).values(id=1, shards=shards, epoch=epoch))
        else:
            connection.execute(update(shard_layout).values(shards=shards, epoch=epoch))
        return epoch

"""documents -> chunks -> embeddings, per shard. Each step does whatever its shard has pending,
so runs that repeat or overlap converge, and a killed run is finished by the next one.
Every step requires shard_lease, so a run holds its shard's lease however it was launched."""

import time
from collections.abc import Sequence

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    asset,
)

from grace.core.failpoints import failpoint
from grace.core.manifest import Manifest
from grace.resources.bindings import EmbedderResource, StoreResource
from grace.resources.chunking import chunker_for
from grace.resources.lease import ShardLeaseResource, lease_resource_defs
from grace.resources.reading import read_document
from grace.resources.schema import NewChunk

BATCHES_PER_COMMIT = 8  # a kill loses at most this many batches of embedding work
LISTED = 20  # how many paths metadata lists before it only counts


def build_ingest_assets(
    manifest: Manifest, shards: PartitionsDefinition, source_keys: Sequence[AssetKey]
) -> list[AssetsDefinition]:
    sources = {source.name: source for source in manifest.sources}
    shard_count = manifest.index.shards

    @asset(
        partitions_def=shards,
        deps=list(source_keys),
        resource_defs=lease_resource_defs(manifest.store_url),
        group_name="ingest",
        kinds={"python"},
        description="Files read into text. Binary, non-UTF-8, empty or oversized files are "
        "quarantined with a reason; deleted files are removed.",
    )
    def documents(
        context: AssetExecutionContext, store: StoreResource, shard_lease: ShardLeaseResource
    ) -> MaterializeResult:
        grace_store = store.get()
        shard = int(context.partition_key)
        active, quarantined, removed, vanished = [], [], [], []
        for row in grace_store.unprocessed_documents(shard, shard_count):
            if row.status == "deleted":
                grace_store.purge_document(row.id)
                removed.append(row.path)
                continue
            source = sources.get(row.source)
            if source is None:
                context.log.warning(f"{row.path}: source '{row.source}' is no longer in grace.yaml; left as is")
                continue
            result = read_document(source.path, row.path, int(source.max_bytes))
            if result is None:
                vanished.append(row.path)  # the next sensor tick records the deletion
            elif result.problem:
                grace_store.quarantine_document(row.id, result.content_hash, result.problem)
                context.log.warning(f"quarantined {source.path / row.path}: {result.problem}")
                quarantined.append(f"{row.path}: {result.problem}")
            else:
                grace_store.set_document_text(row.id, result.content_hash, result.text)
                active.append(row.path)
            failpoint("documents.after_one")
        return MaterializeResult(
            metadata={
                "read": len(active),
                "quarantined": len(quarantined),
                "removed": len(removed),
                "vanished_before_read": len(vanished),
                "quarantine_reasons": MetadataValue.md(_bullets(quarantined)),
                "read_paths": MetadataValue.md(_bullets(active)),
            }
        )

    @asset(
        partitions_def=shards,
        deps=[documents],
        resource_defs=lease_resource_defs(manifest.store_url),
        group_name="ingest",
        kinds={"python"},
        description=f"Token-aware chunks of at most {manifest.chunking.max_tokens} model tokens "
        f"(special tokens included), {manifest.chunking.overlap_tokens} tokens of overlap.",
    )
    def chunks(
        context: AssetExecutionContext,
        store: StoreResource,
        embedder: EmbedderResource,
        shard_lease: ShardLeaseResource,
    ) -> MaterializeResult:
        grace_store, model = store.get(), embedder.get()
        chunker = chunker_for(manifest, model.tokenizer_file)
        shard = int(context.partition_key)
        # Stages a dead run cut from text that has changed since would never publish.
        discarded = grace_store.discard_stale_stages(shard, shard_count, chunker.settings_key)
        published, staged, largest = 0, 0, 0
        for document_id, text_hash, text in grace_store.documents_to_chunk(shard, shard_count, chunker.settings_key):
            pieces = chunker.split(text)
            largest = max([largest] + [piece.token_count for piece in pieces])
            # An edit's new chunks wait for their embeddings; the old ones stay searchable until then.
            live_now = grace_store.stage_chunks(
                document_id,
                text_hash,
                [NewChunk(i, piece.chunk_hash, piece.text, piece.token_count) for i, piece in enumerate(pieces)],
                chunker.settings_key,
                model.model_id,
            )
            published += live_now
            staged += not live_now
            failpoint("chunks.after_one")
        return MaterializeResult(
            metadata={
                "documents_chunked": published + staged,
                "published_at_once": published,
                "staged_for_embeddings": staged,
                "stale_stages_discarded": discarded,
                "largest_chunk_tokens": largest,
                "max_tokens": manifest.chunking.max_tokens,
            }
        )

    @asset(
        partitions_def=shards,
        deps=[chunks],
        resource_defs=lease_resource_defs(manifest.store_url),
        group_name="ingest",
        kinds={"onnx" if manifest.embedding.backend == "onnx-int8" else "pytorch"},
        description=f"One vector per distinct chunk text, from {manifest.embedding.model} "
        f"({manifest.embedding.backend}); "
        "cached by (model, chunk hash), so unchanged text is never embedded twice.",
    )
    def embeddings(
        context: AssetExecutionContext,
        store: StoreResource,
        embedder: EmbedderResource,
        shard_lease: ShardLeaseResource,
    ) -> MaterializeResult:
        grace_store, model = store.get(), embedder.get()
        shard = int(context.partition_key)
        todo = grace_store.chunks_to_embed(shard, shard_count, model.model_id)
        others = grace_store.vectors_from_other_models([chunk_hash for chunk_hash, _text in todo], model.model_id)
        if others:
            context.log.warning(
                f"re-embedding {len(todo)} chunks with {model.model_id}: the store has vectors of "
                + ", ".join(f"{count} of them from {other}" for other, count in sorted(others.items()))
                + " (embedding.model or embedding.backend changed in grace.yaml). Vectors of two models never "
                "mix: until every shard is re-embedded, search covers the chunks done so far."
            )
        started = time.perf_counter()
        group_size = model.batch_size * BATCHES_PER_COMMIT
        for first in range(0, len(todo), group_size):
            group = todo[first : first + group_size]
            vectors = model.encode([text for _hash, text in group])
            grace_store.save_embeddings(model.model_id, [chunk_hash for chunk_hash, _text in group], vectors)
            failpoint("embeddings.after_group")
        seconds = time.perf_counter() - started
        published = grace_store.publish_staged(shard, shard_count, model.model_id)
        return MaterializeResult(
            metadata={
                "embedded": len(todo),
                "documents_published": published,
                "seconds": round(seconds, 3),
                "chunks_per_second": round(len(todo) / seconds, 2) if todo and seconds else 0.0,
                "model_id": model.model_id,
                "reembedded_from_other_models": sum(others.values()),
            }
        )

    return [documents, chunks, embeddings]


def _bullets(lines: list[str]) -> str:
    shown = "\n".join(f"- {line}" for line in lines[:LISTED])
    extra = len(lines) - LISTED
    return shown + (f"\n- … and {extra} more" if extra > 0 else "") if lines else "(none)"

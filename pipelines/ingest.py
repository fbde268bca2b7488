"""documents -> chunks -> embeddings, per shard. Each step does whatever its shard has pending,
so runs that repeat or overlap converge, and a killed run is finished by the next one.
Every step requires shard_lease, so a run holds its shard's lease however it was launched, and logs its
progress (files, chunks, chunks/s, ETA) every PROGRESS_SECONDS of a long run."""

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
from grace.core.manifest import Manifest, SourceConfig
from grace.pipelines.labels import model_kind, store_kind
from grace.resources.db.chunk_rows import NewChunk, chunk_context
from grace.resources.runs.lease import ShardLeaseResource, lease_resource_defs
from grace.resources.runs.progress import Progress
from grace.resources.store.chunks import ChunkCut
from grace.resources.store.documents import DocumentToRead, ReadRecorder
from grace.resources.store.texts import TextToChunk
from grace.resources.text.chunking import Chunk, chunker_for
from grace.resources.text.extraction import FileToRead, ReadResult, read_documents, read_file, source_stamps
from grace.resources.text.isolation import ReaderPool
from grace.resources.text.readers.base import ExtractedDocument
from grace.resources.text.readers.registry import reader_for
from grace.resources.text.stored_document import from_stored, to_stored
from grace.resources.wiring.dagster_resources import EmbedderResource, StoreResource

BATCHES_PER_COMMIT = 8  # a kill loses at most this many batches of embedding work
LISTED = 20  # how many paths metadata lists before it only counts


def build_ingest_assets(
    manifest: Manifest, shards: PartitionsDefinition, source_keys: Sequence[AssetKey]
) -> list[AssetsDefinition]:
    sources = {source.name: source for source in manifest.sources}
    # A file read with a reader version or reader settings its source no longer has is read again.
    stamps_by_source = {source.name: source_stamps(source) for source in manifest.sources}
    shard_count = manifest.index.shards
    owners, stored_in = manifest.owners, store_kind(manifest)

    @asset(
        partitions_def=shards,
        deps=list(source_keys),
        resource_defs=lease_resource_defs(manifest.store_url),
        group_name="ingest",
        owners=owners,
        kinds={"python", stored_in},
        description="Per shard: the changed files of every source read into text (stored encrypted) by the "
        "reader of their suffix; PDF, Word and HTML are parsed in a worker process with a time limit per file. "
        "Unreadable, binary, non-UTF-8, empty or oversized files are quarantined with a reason (metadata "
        "quarantine_reasons, and `grace stats`); deleted files are removed. Partition = shard; each run does "
        "whatever its shard has pending.",
    )
    def documents(
        context: AssetExecutionContext, store: StoreResource, shard_lease: ShardLeaseResource
    ) -> MaterializeResult:
        grace_store = store.get()
        shard = int(context.partition_key)
        outcomes = ReadOutcomes()
        to_read = grace_store.documents.documents_to_read(shard, shard_count, stamps_by_source)
        with ReaderPool() as pool:
            # The workers load their parsers while the deletions are purged.
            pool.start(sum(1 for row in to_read if (reader := reader_for(row.path)) and reader.isolated))
            removed = grace_store.documents.purge_deleted([row.id for row in to_read if row.status == "deleted"])
            # Committed a batch at a time: a kill loses at most the batch being read.
            reads = grace_store.documents.recording_reads(after_commit=lambda: failpoint("documents.after_one"))
            progress = Progress(
                context.log.info,
                f"shard {shard} documents",
                total_files=sum(row.status != "deleted" for row in to_read),
            )
            for row, result in read_documents(pool, _files_to_read(context, to_read, sources)):
                _record_read(context, row, sources[row.source].path, result, reads, outcomes)
                progress.advance(files=1)
        reads.flush()
        progress.finish()
        return MaterializeResult(
            metadata={
                "read": len(outcomes.active),
                "unchanged": outcomes.unchanged,
                "quarantined": len(outcomes.quarantined),
                "removed": removed,
                "vanished_before_read": len(outcomes.vanished),
                "quarantine_reasons": MetadataValue.md(_bullets(outcomes.quarantined)),
                "read_paths": MetadataValue.md(_bullets(outcomes.active)),
            }
        )

    @asset(
        partitions_def=shards,
        deps=[documents],
        resource_defs=lease_resource_defs(manifest.store_url),
        group_name="ingest",
        owners=owners,
        kinds={"python", stored_in},
        description=f"Per shard: each changed document cut into token-aware chunks of at most "
        f"{manifest.chunking.max_tokens} model tokens (special tokens included), "
        f"{manifest.chunking.overlap_tokens} tokens of overlap, so the model never truncates. An edit's new "
        "chunks are staged until their embeddings exist; the old ones stay searchable meanwhile.",
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
        discarded = grace_store.chunks.discard_stale_stages(shard, shard_count, chunker.settings_key)
        released = grace_store.texts.release_chunked_texts(shard, shard_count, chunker.settings_key)
        published, staged, largest, reread, changed = 0, 0, 0, 0, []
        total = grace_store.texts.count_documents_to_chunk(shard, shard_count, chunker.settings_key)
        progress = Progress(context.log.info, f"shard {shard} chunks", total_files=total)
        for page in grace_store.texts.documents_to_chunk(shard, shard_count, chunker.settings_key):
            cuts = []
            for document in page:
                stored = document.text
                extracted = from_stored(stored) if stored is not None else _document_from_file(document, sources)
                if extracted is None:
                    # Changed or gone since it was read: the documents step reads it anew once a scan sees it.
                    changed.append(document.path)
                    progress.advance(files=1)
                    continue
                reread += document.text is None
                pieces = chunker.split_document(extracted)
                largest = max([largest] + [piece.token_count for piece in pieces])
                new_chunks = [_new_chunk(i, piece) for i, piece in enumerate(pieces)]
                cuts.append(ChunkCut(document.document_id, document.text_hash, new_chunks))
                progress.advance(files=1, chunks=len(new_chunks))
            # An edit's new chunks wait for their embeddings; the old ones stay searchable until then.
            live_now = grace_store.chunks.stage(cuts, chunker.settings_key, model.model_id)
            published += sum(live_now)
            staged += len(live_now) - sum(live_now)
            failpoint("chunks.after_one")
        progress.finish()
        if changed:
            context.log.info(f"{len(changed)} documents not re-chunked: their files changed since they were read")
        return MaterializeResult(
            metadata={
                "documents_chunked": published + staged,
                "published_at_once": published,
                "staged_for_embeddings": staged,
                "reread_from_files": reread,
                "changed_since_read": MetadataValue.md(_bullets(changed)),
                "stale_stages_discarded": discarded,
                "stored_texts_released": released,
                "largest_chunk_tokens": largest,
                "max_tokens": manifest.chunking.max_tokens,
            }
        )

    @asset(
        partitions_def=shards,
        deps=[chunks],
        resource_defs=lease_resource_defs(manifest.store_url),
        group_name="ingest",
        owners=owners,
        kinds={model_kind(manifest), stored_in},
        description=f"Per shard: one vector per distinct chunk text, from {manifest.embedding.model} "
        f"({manifest.embedding.backend}), cached by (model, chunk hash) so unchanged text is never embedded "
        "twice; then each document's staged chunks go live in one transaction. A chunk is searchable as soon "
        "as its vector is stored, before vector_index indexes it.",
    )
    def embeddings(
        context: AssetExecutionContext,
        store: StoreResource,
        embedder: EmbedderResource,
        shard_lease: ShardLeaseResource,
    ) -> MaterializeResult:
        grace_store, model = store.get(), embedder.get()
        shard = int(context.partition_key)
        started = time.perf_counter()
        embedded, others = 0, Counter()
        # One page per commit, saved before the next is read: a hash is embedded once, and a kill
        # loses at most a page.
        group_size = model.batch_size * BATCHES_PER_COMMIT
        total = grace_store.texts.count_texts_to_embed(shard, shard_count, model.model_id)
        progress = Progress(context.log.info, f"shard {shard} embeddings", total_chunks=total)
        for group in grace_store.texts.chunks_to_embed(shard, shard_count, model.model_id, group_size):
            hashes = [chunk_hash for chunk_hash, _text in group]
            found = grace_store.embeddings.vectors_from_other_models(hashes, model.model_id)
            if found and not others:
                context.log.info(f"other models have vectors of these chunks: re-embedding with {model.model_id}")
            others.update(found)
            # One call per page: the encoder sorts the whole page by length, so batches pad less.
            grace_store.embeddings.save(model.model_id, hashes, model.encode([text for _hash, text in group]))
            embedded += len(group)
            progress.advance(chunks=len(group))
            failpoint("embeddings.after_group")
        progress.finish()
        seconds = time.perf_counter() - started
        if others:
            context.log.warning(
                f"re-embedding {embedded} chunks with {model.model_id}: the store has vectors of "
                + ", ".join(f"{count} of them from {other}" for other, count in sorted(others.items()))
                + " (embedding.model or embedding.backend changed in grace.yaml). Vectors of two models never "
                "mix: search answers from the model it served before until every shard is re-embedded."
            )
        published = grace_store.chunks.publish_staged(shard, shard_count, model.model_id)
        replaced = grace_store.serving.promote_when_complete(model.model_id)
        if replaced:
            context.log.info(
                f"every live chunk has a vector of {model.model_id}: search now answers from it, not {replaced}"
            )
        serving = grace_store.serving.model(model.model_id)
        # While re-embedding, what is left across every shard: the progress a user watches.
        left = grace_store.serving.chunks_lacking(model.model_id) if serving != model.model_id else 0
        return MaterializeResult(
            metadata={
                "serving_model_id": serving,
                "reembedding_chunks_left": left,
                "embedded": embedded,
                "documents_published": published,
                "seconds": round(seconds, 3),
                "chunks_per_second": round(embedded / seconds, 2) if embedded and seconds else 0.0,
                "model_id": model.model_id,
                "reembedded_from_other_models": sum(others.values()),
            }
        )

    return [documents, chunks, embeddings]


@dataclass
class ReadOutcomes:
    """What a documents run did with each file it read, for its metadata."""

    active: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    unchanged: int = 0


def _files_to_read(
    context: AssetExecutionContext, rows: list[DocumentToRead], sources: dict[str, SourceConfig]
) -> Iterator[tuple[DocumentToRead, FileToRead]]:
    for row in rows:
        source = sources.get(row.source)
        if row.status == "deleted":
            continue
        if source is None:
            context.log.warning(f"{row.path}: source '{row.source}' is no longer in grace.yaml; left as is")
            continue
        yield row, _file_of(source, row.path)


def _record_read(
    context: AssetExecutionContext,
    row: DocumentToRead,
    source_path: Path,
    result: ReadResult | None,
    reads: ReadRecorder,
    outcomes: ReadOutcomes,
) -> None:
    """Record what became of one pending file."""
    if result is None:
        outcomes.vanished.append(row.path)  # the next sensor tick records the deletion
    elif result.problem:
        reads.quarantine(row, result.content_hash, result.stamp, result.problem)
        context.log.warning(f"quarantined {source_path / row.path}: {result.problem}")
        outcomes.quarantined.append(f"{row.path}: {result.problem}")
    elif result.content_hash == row.processed_hash and row.status == "active" and result.stamp == row.read_settings:
        reads.confirm(row, result.content_hash)  # touched, not edited: its chunks stand
        outcomes.unchanged += 1
    else:
        reads.activate(row, result.content_hash, result.stamp, to_stored(result.document))
        outcomes.active.append(row.path)


def _file_of(source: SourceConfig, relative: str) -> FileToRead:
    return FileToRead(source.path, relative, int(source.max_bytes), source.max_pages, source.read_seconds)


def _bullets(lines: list[str]) -> str:
    shown = "\n".join(f"- {line}" for line in lines[:LISTED])
    extra = len(lines) - LISTED
    return shown + (f"\n- … and {extra} more" if extra > 0 else "") if lines else "(none)"


def _document_from_file(document: TextToChunk, sources: dict[str, SourceConfig]) -> ExtractedDocument | None:
    """A document whose text the store no longer holds, read from its file again; None if the file
    is gone or no longer what the document's chunks must be cut from."""
    source = sources.get(document.source)
    if source is None:
        return None
    read = read_file(_file_of(source, document.path))
    return read.document if read is not None and read.content_hash == document.text_hash else None


def _new_chunk(ordinal: int, piece: Chunk) -> NewChunk:
    context = chunk_context(piece.title, piece.heading)
    return NewChunk(
        ordinal, piece.chunk_hash, piece.text, piece.token_count, context, piece.first_page, piece.last_page
    )

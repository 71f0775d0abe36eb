"""Ingest: chunk a staged batch, embed what has not been embedded before, write one segment.

A chunk's vector is looked up before it is embedded: first among the chunks the same document had
(its segment), then in the embedding cache shared by every collection and job (`embed_cache`); only
what neither holds reaches the model, and what the model returns goes into the cache."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

import numpy as np

from shared import eventnames as names
from shared.errors import JobCanceled, JobInputError
from shared.index.chunking import embed_text
from shared.index.documents import chunk_document
from shared.index.embedders import Embedder, pinned
from shared.jobs.progress import ProgressReporter
from shared.jobs.submit import request_rebuild
from shared.limits import metadata_bytes
from shared.services import Services

log = logging.getLogger(__name__)


def _known_vectors(svc: Services, collection: str, doc_ids: list[str], model_id: str) -> dict[str, np.ndarray]:
    """content hash -> vector for the chunks of the current versions of `doc_ids`, so re-submitted
    documents only embed the chunks that changed."""
    known: dict[str, np.ndarray] = {}
    for seq in sorted(set(svc.collections.doc_locations(collection, doc_ids).values())):
        try:
            if svc.storage.read_segment_meta(collection, seq).get("model") != model_id:
                continue
            vectors = svc.storage.read_segment_vectors(collection, seq)
            for row, rec in enumerate(svc.storage.iter_segment_records(collection, seq)):
                known.setdefault(rec["hash"], np.array(vectors[row]))
        except FileNotFoundError:
            continue  # compacted away meanwhile: the cache or the model provides the vectors
    return known


# Kept when a document's metadata must be cut down: what sources set, a few short values.
ESSENTIAL_METADATA = ("source", "path", "type", "language", "source_commit", "indexed_at", "file_size",
                      "file_mtime_ns", "file_sha256")


def bounded_metadata(metadata: dict, limit: int) -> dict:
    """`metadata` when its JSON fits `limit` bytes (SWAPLINE_MAX_METADATA_BYTES; it is copied into every
    chunk). Otherwise front matter is dropped first, with a note saying so; if still over, only the
    keys sources set are kept, with a note. The API refuses posted metadata over the limit, so this
    is for front matter (and batches staged before the limit)."""
    if metadata_bytes(metadata) <= limit:
        return metadata
    note = f"front matter over SWAPLINE_MAX_METADATA_BYTES ({limit}) was dropped"
    if "front_matter" in metadata:
        trimmed = {k: v for k, v in metadata.items() if k != "front_matter"}
        trimmed["front_matter_dropped"] = note
        if metadata_bytes(trimmed) <= limit:
            return trimmed
    kept = {k: metadata[k] for k in ESSENTIAL_METADATA if k in metadata}
    kept["metadata_dropped"] = f"metadata over SWAPLINE_MAX_METADATA_BYTES ({limit}) was dropped"
    return kept if metadata_bytes(kept) <= limit else {"metadata_dropped": kept["metadata_dropped"]}


def chunk_documents(svc: Services, documents: list[dict]) -> tuple[list[dict], list[str], dict[str, int]]:
    """Chunk records, the text to embed for each, and the chunk count per document."""
    s = svc.settings
    tokenizer = svc.embedder.tokenizer
    records, texts, counts = [], [], {}
    for doc in documents:
        metadata = doc.get("metadata") or {}
        chunks, extra = chunk_document(doc["text"], metadata, tokenizer, s.chunk_max_tokens, s.chunk_overlap_tokens)
        metadata = bounded_metadata({**metadata, **extra}, s.max_metadata_bytes)
        counts[doc["id"]] = len(chunks)
        for chunk in chunks:
            record = {"doc_id": doc["id"], "chunk_id": f"{doc['id']}#{chunk.ordinal}", "text": chunk.text,
                      "heading_path": list(chunk.heading_path), "metadata": metadata, "hash": chunk.content_hash}
            if chunk.lines:
                record["lines"] = list(chunk.lines)
            records.append(record)
            texts.append(embed_text(chunk))
    return records, texts, counts


def embed_records(svc: Services, job_id: str, records: list[dict], texts: list[str],
                  known: dict[str, np.ndarray], embedder: Embedder | None = None) -> tuple[np.ndarray, int, float]:
    """Vectors for `records` in order, embedding only unseen content, all with `embedder` (one
    runtime; the process's by default).

    Returns (vectors, how many were embedded, seconds spent embedding)."""
    embedder = embedder or pinned(svc.embedder)
    vectors = np.zeros((len(records), embedder.dim), dtype=np.float32)
    missing = list({rec["hash"] for rec in records if rec["hash"] not in known})
    known = {**known, **svc.embed_cache.get_many(embedder.model_id, missing, embedder.dim)}
    todo, seen = [], {}
    for i, rec in enumerate(records):
        if rec["hash"] in known:
            vectors[i] = known[rec["hash"]]
        elif rec["hash"] in seen:
            continue  # the same text twice in this batch: embedded once, copied below
        else:
            seen[rec["hash"]] = i
            todo.append(i)
    # Longest first, so each batch pads little; the embedder keeps its own order within a call.
    todo.sort(key=lambda i: len(texts[i]), reverse=True)
    group = svc.settings.embed_batch_size * 4
    progress = ProgressReporter(svc.jobs, job_id, names.STAGE_EMBED, len(todo), svc.settings.progress_every)
    for start in range(0, len(todo), group):
        if svc.jobs.cancel_requested(job_id):
            raise JobCanceled(job_id)
        rows = todo[start:start + group]
        vectors[rows] = embedder.embed([texts[i] for i in rows])
        svc.embed_cache.put_many(embedder.model_id, {records[i]["hash"]: vectors[i] for i in rows})
        progress.update(start + len(rows))
    for i, rec in enumerate(records):
        if rec["hash"] in seen and seen[rec["hash"]] != i:
            vectors[i] = vectors[seen[rec["hash"]]]
    seconds = progress.finish()
    return vectors, len(todo), seconds


def write_documents(svc: Services, job_id: str, collection: str, documents: list[dict],
                    tombstones: Sequence[str] = ()) -> tuple[int, dict]:
    """Chunk and embed `documents`, write them (and tombstones for `tombstones`) as one segment and
    register it. Returns (segment seq, summary). Used by ingest jobs and by a reconcile's batches."""
    svc.jobs.progress(job_id, names.STAGE_CHUNK, 0, len(documents))
    records, texts, counts = chunk_documents(svc, documents)
    # One runtime for the whole segment: a calibration switching the process's runtime meanwhile must
    # not mix runtimes under one model id (segment meta, cache keys).
    embedder = pinned(svc.embedder)
    known = _known_vectors(svc, collection, list(counts), embedder.model_id)
    vectors, embedded, embed_seconds = embed_records(svc, job_id, records, texts, known, embedder)
    # Counted when done: a redelivered job embeds (and counts) its chunks again, as it really did.
    svc.counters.add_embedded(collection, embedded, embed_seconds)
    seq = svc.collections.next_segment_seq(collection)
    svc.jobs.progress(job_id, names.STAGE_WRITE, 0, 1)
    svc.storage.write_segment(collection, seq, records, vectors, {
        "docs": list(counts), "tombstones": list(tombstones), "model": embedder.model_id,
        "dim": embedder.dim, "job_id": job_id, "created_at": time.time()})
    summary = {"documents": len(counts), "chunks": len(records), "embedded": embedded,
               "reused": len(records) - embedded, "embed_seconds": round(embed_seconds, 3),
               "embed_rate": round(embedded / embed_seconds, 2) if embedded and embed_seconds > 0 else None}
    svc.jobs.set_fields(job_id, summary=json.dumps(summary))
    svc.collections.register_segment(collection, seq, job_id, {**counts, **{doc: -1 for doc in tombstones}})
    log.info("event=ingest.segment job=%s collection=%s seq=%s documents=%s chunks=%s embedded=%s tombstones=%s",
             job_id, collection, seq, len(counts), len(records), embedded, len(tombstones))
    return seq, summary


def run_ingest(svc: Services, job_id: str) -> None:
    """Run one ingest job from its staged batch. Safe to run again after a crash: a segment already
    registered by an earlier delivery is not written twice."""
    raw = svc.jobs.begin(job_id)
    if raw is None:
        return
    collection = raw["collection"]
    options = svc.jobs.options(job_id)
    started = time.monotonic()
    if "segment" not in raw:
        if not svc.collections.exists(collection):
            raise JobInputError(f"collection {collection!r} does not exist")
        try:
            documents = svc.storage.read_staging(job_id)
        except FileNotFoundError as exc:
            raise JobInputError("the staged batch is missing from the data dir") from exc
        seq, summary = write_documents(svc, job_id, collection, documents)
    else:
        seq = int(raw["segment"])
        summary = json.loads(raw.get("summary") or "{}")
    svc.storage.delete_staging(job_id)
    result = {"segment": seq, **summary, "seconds": round(time.monotonic() - started, 3)}
    if options.get("rebuild", True):
        rebuild_job, _ = request_rebuild(svc, collection, exclusive=False)
        result["rebuild_job_id"] = rebuild_job["id"]
    svc.jobs.succeed(job_id, result)

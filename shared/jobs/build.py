"""The index of a new version, built from a segment snapshot: incrementally from the published version
when only segments were added since it was built, else in full.

Incremental: the published version's records and FAISS index are read into memory (a copy; its files
are never touched), the rows of documents that the new segments replace or tombstone are dropped, and
the new segments' live rows are appended. Old rows keep their order and the new ones follow in segment
order, which is exactly the order a full build gives, so row id == position in chunks.jsonl still holds
and the result equals a full build on the same quantizer. It falls back to a full build when the
segment list is not an extension of the published one (compaction or a drop in between), when the
model changed, when the size calls for the other index kind, when the published files fail their
checksums, or when the IVF quantizer must be retrained (`shared.index.ivf`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from shared.index import ivf
from shared.index.vectorindex import (
    INDEX_FILE,
    KIND_FLAT,
    KIND_IVF,
    VerifyFailed,
    add_in_steps,
    build_flat,
    build_ivf,
    ivf_on,
    read_index,
    read_index_copy,
    read_manifest,
    read_records,
    sha256_file,
    training_rows,
)
from shared.jobs.merge import Latest, latest_documents, read_live
from shared.services import Services
from shared.storage import UnsafePath

log = logging.getLogger(__name__)

Steps = Callable[[int], Callable[[int], None]]  # rows to add -> what runs between build steps


@dataclass
class Previous:
    """The published version a build may start from."""

    version: int
    directory: Path
    manifest: dict


@dataclass
class Built:
    index: faiss.Index
    records: list[dict]
    documents: int
    rows_total: int  # rows the snapshot's segments hold, live or not (decides a compaction)
    facts: dict = field(default_factory=dict)  # for the manifest and the job result


def previous_version(svc: Services, collection: str) -> Previous | None:
    pointer = svc.pointers.get(collection)
    if not pointer:
        return None
    try:
        directory = svc.storage.resolve_relative(pointer["path"])
        return Previous(int(pointer["version"]), directory, read_manifest(directory))
    except (OSError, VerifyFailed, UnsafePath) as exc:
        log.warning("event=build.previous_unreadable collection=%s error=%r", collection, str(exc))
        return None


def kind_for(rows: int, svc: Services) -> str:
    return KIND_IVF if rows >= svc.settings.approx_threshold else KIND_FLAT


def _strip(records: list[dict]) -> list[dict]:
    for rec in records:
        rec.pop("hash", None)
    return records


def why_not_incremental(svc: Services, collection: str, previous: Previous | None, segments: list[int]) -> str | None:
    if not svc.settings.incremental_builds:
        return "incremental builds are off"
    if previous is None:
        return "no published version"
    manifest = previous.manifest
    if "incremental" not in manifest:
        return f"version {previous.version} predates incremental builds"
    if manifest.get("model") != svc.embedder.model_id or manifest.get("dim") != svc.embedder.dim:
        return f"version {previous.version} was built with another model"
    if published_head(svc, collection, segments, manifest.get("segments") or []) is None:
        return f"segments were compacted or dropped since version {previous.version}"
    return None


def published_head(svc: Services, collection: str, segments: list[int], old: list[int]) -> int | None:
    """How many segments at the head of `segments` hold exactly the published version's rows: its own
    segments, still first; or the one segment a compaction wrote from exactly those segments (it holds
    their live rows in the same order, which are the version's rows). None when neither: segments
    registered before the compaction's snapshot were folded in, or some were dropped."""
    if segments[:len(old)] == old:
        return len(old)
    if old and segments and svc.storage.read_segment_meta(collection, segments[0]).get("compacted_from") == old:
        return 1
    return None


def build_index(svc: Services, collection: str, segments: list[int], version: int, steps: Steps) -> Built:
    """The index and records of a new version over `segments`, incremental when it can be."""
    previous = previous_version(svc, collection)
    reason = why_not_incremental(svc, collection, previous, segments)
    # Every segment's metadata, read once: a full build after a refused incremental one reuses it.
    latest = latest_documents(svc, collection, segments)
    retrain = None
    if reason is None:
        assert previous is not None  # why_not_incremental gives a reason when there is none
        try:
            built = incremental(svc, collection, segments, latest, previous, version, steps)
        except (VerifyFailed, OSError) as exc:  # damaged, or collected meanwhile: the segments still hold it all
            built = f"version {previous.version} could not be read: {exc}"
        if isinstance(built, Built):
            return built
        reason = built
        retrain = reason if reason.startswith("quantizer") else None
    log.info("event=build.full collection=%s reason=%r", collection, reason)
    built = full(svc, collection, segments, latest, previous, version, steps, retrain)
    built.facts["full_reason"] = reason
    return built


def full(svc: Services, collection: str, segments: list[int], latest: Latest, previous: Previous | None,
         version: int, steps: Steps, retrain: str | None = None) -> Built:
    dim = svc.embedder.dim
    records, vectors = read_live(svc, collection, segments, latest, dim)
    _strip(records)
    step = steps(len(records))
    kind = kind_for(len(records), svc)
    facts = {"kind": kind, "incremental": False, "built_from": None, "reused_rows": 0,
             "added_rows": len(records), "removed_rows": 0}
    if kind == KIND_FLAT:
        index = build_flat(vectors, svc.settings.build_step, step)
    else:
        index, quantizer_facts = _full_ivf(svc, vectors, previous, version, step, retrain)
        facts.update(quantizer_facts)
    if not len(records):
        step(0)  # an empty collection still checks cancel and lease once
    return Built(index, records, len(latest.live), latest.rows_total, facts)


def _previous_quantizer(previous: Previous | None, model: str, dim: int) -> tuple[faiss.Index, dict] | None:
    """A copy of the published IVF version's trained quantizer and its training record, if it has one
    for the same model."""
    if previous is None or previous.manifest.get("kind") != KIND_IVF or "ivf_training" not in previous.manifest:
        return None
    if previous.manifest.get("model") != model or previous.manifest.get("dim") != dim:
        return None
    if sha256_file(previous.directory / INDEX_FILE) != previous.manifest["checksum"]:
        return None
    published = read_index(previous.directory, previous.manifest)  # memory-mapped: only the centroids are read
    return faiss.clone_index(faiss.extract_index_ivf(published).quantizer), previous.manifest["ivf_training"]


def _full_ivf(svc: Services, vectors: np.ndarray, previous: Previous | None, version: int,
              step: Callable[[int], None], retrain: str | None) -> tuple[faiss.Index, dict]:
    reusable = None if retrain else _previous_quantizer(previous, svc.embedder.model_id, vectors.shape[1])
    if reusable is not None:
        quantizer, training = reusable
        top, lists = ivf.assign(quantizer, vectors)
        # Every row is assigned again: the counters start over from this build's rows.
        training = ivf.after_assigning({**training, "assigned_since": 0, "far_since": 0}, top)
        retrain = ivf.retrain_reason(training, len(vectors), np.bincount(lists, minlength=quantizer.ntotal))
        if retrain is None:
            index = ivf_on(quantizer)
            step(0)
            ivf.add_assigned(index, vectors, lists, svc.settings.build_step, step)
            return index, {"ivf_training": training,
                           "quantizer": {"reused": True, "trained_in": training["trained_in"]}}
    index, top, lists = build_ivf(vectors, svc.settings.build_step, step)
    trained_on = training_rows(len(vectors), index.nlist)
    return index, {"ivf_training": ivf.training_record(top, lists, trained_on, index.nlist, version),
                   "quantizer": {"reused": False, "trained_in": version, "retrain_reason": retrain}}


def incremental(svc: Services, collection: str, segments: list[int], latest: Latest, previous: Previous,
                version: int, steps: Steps) -> Built | str:
    """The new version's index from the published one, or why a full build is needed instead."""
    head = published_head(svc, collection, segments, previous.manifest["segments"])
    old_records = read_records(previous.directory, previous.manifest)
    keep = _kept(old_records, latest, set(segments[:head]))
    new_records, new_vectors = read_live(svc, collection, segments[head:], latest, svc.embedder.dim)
    _strip(new_records)
    kept = int(keep.sum())
    rows = kept + len(new_records)
    kind = kind_for(rows, svc)
    if kind != previous.manifest.get("kind"):
        return f"{rows} rows call for {kind}, version {previous.version} is {previous.manifest.get('kind')}"
    if kind == KIND_IVF and "ivf_training" not in previous.manifest:
        return f"version {previous.version} has no training record"
    index = read_index_copy(previous.directory, previous.manifest)
    facts = {"kind": kind, "incremental": True, "built_from": previous.version, "reused_rows": kept,
             "added_rows": len(new_records), "removed_rows": len(old_records) - kept}
    if kind == KIND_IVF:
        training = previous.manifest["ivf_training"]
        top, lists = ivf.assign(faiss.extract_index_ivf(index).quantizer, new_vectors)
        training = ivf.after_assigning(training, top)
        ivf.drop_and_renumber(index, keep)
        sizes = ivf.list_sizes(index) + np.bincount(lists, minlength=faiss.extract_index_ivf(index).nlist)
        reason = ivf.retrain_reason(training, rows, sizes)
        if reason is not None:
            return f"quantizer retrained: {reason}"
        step = steps(len(new_records))
        ivf.add_assigned(index, new_vectors, lists, svc.settings.build_step, step)
        facts.update(ivf_training=training, quantizer={"reused": True, "trained_in": training["trained_in"]})
    else:
        if kept < len(old_records):
            index.remove_ids(faiss.IDSelectorBatch(np.flatnonzero(~keep).astype(np.int64)))  # keeps row order
        step = steps(len(new_records))
        add_in_steps(index, new_vectors, svc.settings.build_step, step)
    if not len(new_records):
        step(0)
    records = [rec for rec, live in zip(old_records, keep, strict=True) if live] + new_records
    return Built(index, records, len(latest.live), latest.rows_total, facts)


def _kept(records: list[dict], latest: Latest, old_segments: set[int]) -> np.ndarray:
    """Which rows of the published version stay: their document still lives in an old segment (the
    one the row came from: only new segments can have moved it)."""
    where = latest.segment_of
    return np.fromiter((where.get(rec["doc_id"]) in old_segments for rec in records), dtype=bool, count=len(records))

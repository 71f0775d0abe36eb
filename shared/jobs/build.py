"""The index of a new version, built from a segment snapshot: incrementally from the published version
when only segments were added since it was built, else in full. Both write format 2
(`shared.index.parts`): a version is a manifest over immutable parts.

Incremental: the published version's parts are kept as they are (memory-mapped, never rewritten); the
rows of documents that the new segments replace or tombstone are marked deleted in this version's
bitmaps; one new part holds the new segments' live rows, plus the live rows of the small parts at the
tail that it folds in (`_fold_count`), so parts stay few and their sizes geometric. Only the new part
is written and hashed. Reading what is live needs only the new segments' metadata: where every other
document lives is in the published parts' documents tables. It falls back to a full build (one part)
when the segment list is not an extension of the published one (compaction or a drop in between),
when the model changed, when the size calls for the other index kind, when half the rows are deleted,
when the published parts fail their checks, when the IVF quantizer must be retrained
(`shared.index.ivf`) or nprobe re-tuned, or when the published version is format 1.

A full build streams: the live rows' records are read from the segments as the part's tables are written
(`merge.LiveRecords`: the tables gather columns, not a dict per record), their vectors slice by slice
from the segments (`SLICE_ROWS` at a time); IVF trains on a sample (`training_rows`) and adds each slice, and a
compressed build writes the part's float vectors in the same slices to a file aside, which the part
takes over when it is written. Its memory follows the slice and the index, not the collection.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.index import ivf
from shared.index.compressed import (
    ROW_DTYPES,
    VECTORS_FILE,
    coarse_quantizer,
    pq_on,
    pq_supported,
    pq_train,
    sq_on,
    train_encoder,
)
from shared.index.embedders import same_vector_space
from shared.index.parts import LoadedPart, PartRef, is_format2, open_parts, part_name, part_refs, part_vectors
from shared.index.vectorindex import (
    COMPRESSED_KINDS,
    IVF_KINDS,
    KIND_FLAT,
    KIND_IVF,
    KIND_IVF_PQ,
    KIND_IVF_SQ,
    VerifyFailed,
    add_in_steps,
    build_flat,
    ivf_lists,
    ivf_on,
    read_manifest,
    train_quantizer,
    training_rows,
)
from shared.jobs.merge import SLICE_ROWS, LiveRows, latest_documents, live_records, read_live
from shared.services import Services
from shared.settings import Settings
from shared.storage import NpyWriter, RecordSource, UnsafePath, written

log = logging.getLogger(__name__)

Steps = Callable[[int], Callable[[int], None]]  # rows to add -> what runs between build steps
MAX_PARTS = 8  # a version never has more parts than this: the new part folds the tail in
FOLD_RATIO = 2  # a tail part is folded into the new one while it holds at most this many times its rows
MAX_DELETED_SHARE = 0.5  # a version whose parts hold more deleted rows than this is built in full
NPROBE_ROWS = (0.8, 1.25)  # nprobe tuned for n rows is kept while the rows stay within these factors of n


@dataclass
class Previous:
    """The published version a build may start from."""

    version: int
    directory: Path
    manifest: dict


@dataclass
class Built:
    kept: list[PartRef]  # the published version's parts this version keeps, with its own deletions
    index: faiss.Index | None  # the new part's index (possibly empty); None once handed to the part's write
    records: RecordSource  # the new part's chunk records, row i is vector i of `index`
    segment_of: dict[str, int] | Callable[[str], int]  # the new part's documents -> their segments
    part_segments: list[int]  # the segments whose rows the new part holds
    documents: int  # live documents of the version
    rows_total: int  # rows the snapshot's segments hold, live or not (decides a compaction)
    facts: dict = field(default_factory=dict)  # for the manifest and the job result
    vectors_file: Path | None = None  # compressed: the new part's float vectors, written aside

    def discard(self) -> None:
        """Remove what the build wrote aside and nothing took over (its temporary vectors folder)."""
        if self.vectors_file is not None:
            shutil.rmtree(self.vectors_file.parent, ignore_errors=True)

    @property
    def live_rows(self) -> int:
        return sum(ref.live for ref in self.kept) + len(self.records)

    @property
    def part_index(self) -> faiss.Index:
        """The new part's index, until `hand_over` gave it away."""
        if self.index is None:
            raise RuntimeError("the index was handed to the part's write")
        return self.index

    def hand_over(self) -> faiss.Index:
        """The index, which this build no longer references: the part's write frees its memory once
        its file is written, before the tables (a 10M-row compressed index is about 3.6 GiB)."""
        index, self.index = self.part_index, None
        return index


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
    if rows >= svc.settings.compress_threshold:
        # PQ4 splits the vector into 4-dimension sub-spaces; a model whose width does not split gets SQ8.
        return KIND_IVF_PQ if svc.settings.compress_codes == "pq4" and pq_supported(svc.embedder.dim) else KIND_IVF_SQ
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
    if not is_format2(manifest):
        return f"version {previous.version} is format 1 (one file per table): rebuilt in parts"
    # Runtimes of one model (torch fp32/bf16, ONNX; a calibration switches between them) embed into one
    # space: their rows sit in one index, as a query of one searches rows of another.
    if not same_vector_space(manifest.get("model"), svc.embedder.model_id) or manifest.get("dim") != svc.embedder.dim:
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
    """The parts of a new version over `segments`, incremental when it can be."""
    previous = previous_version(svc, collection)
    reason = why_not_incremental(svc, collection, previous, segments)
    retrain = None
    if reason is None:
        assert previous is not None  # why_not_incremental gives a reason when there is none
        try:
            built = incremental(svc, collection, segments, previous, steps, version)
        except (VerifyFailed, OSError) as exc:  # damaged, or collected meanwhile: the segments still hold it all
            built = f"version {previous.version} could not be read: {exc}"
        if isinstance(built, Built):
            return built
        reason = built
        retrain = reason if reason.startswith("quantizer") else None
    log.info("event=build.full collection=%s reason=%r", collection, reason)
    built = full(svc, collection, segments, previous, version, steps, retrain)
    built.facts["full_reason"] = reason
    return built


def full(svc: Services, collection: str, segments: list[int], previous: Previous | None, version: int,
         steps: Steps, retrain: str | None = None) -> Built:
    """One part over every live row, streamed: the records are read from the segments as the part's
    tables are written (`LiveRecords`), the vectors slice by slice (`LiveRows`), so the worker holds a
    slice, the index and the tables' columns, not the records or the float array."""
    dim = svc.embedder.dim
    latest = latest_documents(svc, collection, segments)
    records, rows = live_records(svc, collection, segments, latest, dim)
    records = records.without("hash")
    step = steps(len(records))
    kind = kind_for(len(records), svc)
    facts = {"kind": kind, "incremental": False, "built_from": None, "reused_rows": 0,
             "added_rows": len(records), "removed_rows": 0, "parts_kept": 0, "parts_folded": 0}
    vectors_file = None
    if kind == KIND_FLAT:
        index: faiss.Index = faiss.IndexFlatIP(dim)
        start = 0
        for chunk in rows.slices(SLICE_ROWS):
            add_in_steps(index, chunk, svc.settings.build_step, _after(step, start))
            start += len(chunk)
    else:
        index, quantizer_facts, vectors_file = _full_ivf(svc, collection, rows, previous, version, step, retrain,
                                                         kind)
        facts.update(quantizer_facts)
    if not len(records):
        step(0)  # an empty collection still checks cancel and lease once
    # Documents with no chunk (empty text) hold no row: a version counts the documents it can list. Every
    # document here is live, so its segment is the one `latest` names (no copy of that map is made).
    segment_of = cast(dict[str, int], latest.segment_of)
    return Built([], index, records, segment_of.__getitem__, list(segments), records.documents, latest.rows_total,
                 facts, vectors_file)


def _after(step: Callable[[int], None], base: int) -> Callable[[int], None]:
    """`step` for a slice that starts at row `base`: progress counts rows over the whole build."""
    return lambda done: step(base + done)


def _vectors_file(svc: Services, collection: str, version: int) -> Path:
    """Where a compressed build writes its part's float vectors until the part is written (a temporary
    folder beside the parts: a build killed meanwhile leaves it for the next build to remove)."""
    parent = svc.storage.part_dir(collection, part_name(version)).parent
    return svc.storage.temp_dir(parent, f"vectors-{version}") / VECTORS_FILE


def _new_ivf(kind: str, quantizer: faiss.Index, sample: Callable[[], np.ndarray]) -> faiss.Index:
    """An empty IVF index of `kind` on a copy of a trained quantizer, a compressed kind's encoder
    trained on `sample()` (SQ8's ranges; PQ4's rotation and codebooks)."""
    if kind == KIND_IVF:
        return ivf_on(quantizer)
    if kind == KIND_IVF_PQ:
        return pq_train(quantizer, sample())
    index = sq_on(quantizer)
    train_encoder(index, sample())
    return index


def _on_published(kind: str, quantizer: faiss.Index, published: faiss.Index) -> faiss.Index:
    """An empty IVF index of `kind` on `quantizer` with the encoder of a published part of the same
    kind: every part of a version encodes rows alike."""
    if kind == KIND_IVF:
        return ivf_on(quantizer)
    return pq_on(quantizer, published) if kind == KIND_IVF_PQ else sq_on(quantizer, published)


def _full_ivf(svc: Services, collection: str, rows: LiveRows, previous: Previous | None, version: int,
              step: Callable[[int], None], retrain: str | None, kind: str) -> tuple[faiss.Index, dict, Path | None]:
    """A full IVF build over the live rows, read in slices: k-means (and a compressed kind's encoder) on
    a sample, then each slice assigned and added. The published quantizer is reused when it still fits
    (one more pass first, to assign every row and decide). Returns the index, the quantizer facts and,
    for a compressed kind, the file its float vectors were written to."""
    n, dim = len(rows), rows.dim
    reusable = None if retrain else _previous_quantizer(previous, svc.embedder.model_id, dim)
    quantizer_facts: dict
    if reusable is not None:
        quantizer, training = reusable
        top, lists = _assign_streamed(quantizer, rows, step)
        # Every row is assigned again: the counters start over from this build's rows.
        training = ivf.after_assigning({**training, "assigned_since": 0, "far_since": 0}, top)
        retrain = ivf.retrain_reason(training, n, np.bincount(lists, minlength=quantizer.ntotal))
        if retrain is None:
            index = _new_ivf(kind, quantizer, lambda: rows.take(training_rows(n, quantizer.ntotal)))
            quantizer_facts = {"ivf_training": training,
                               "quantizer": {"reused": True, "trained_in": training["trained_in"]}}
    if reusable is None or retrain is not None:
        nlist = ivf_lists(n)
        trained_on = training_rows(n, nlist)
        sample = rows.take(trained_on)
        quantizer = train_quantizer(sample, nlist)  # k-means on the sample
        index = _new_ivf(kind, quantizer, lambda: sample)
        del sample
        top, lists = _assign_streamed(quantizer, rows, step)
        quantizer_facts = {"ivf_training": ivf.training_record(top, lists, trained_on, nlist, version),
                           "quantizer": {"reused": False, "trained_in": version, "retrain_reason": retrain}}
    step(0)
    ivf.reserve_lists(index, lists)
    vectors_file = _vectors_file(svc, collection, version) if kind in COMPRESSED_KINDS else None
    with contextlib.ExitStack() as stack:
        writer = None
        if vectors_file is not None:
            writer = NpyWriter(stack.enter_context(written(vectors_file, "an index part")), n, dim,
                               ROW_DTYPES[svc.settings.rerank_rows])
        start = 0
        for chunk in rows.slices(SLICE_ROWS):
            ivf.add_assigned(index, chunk, lists[start:start + len(chunk)], svc.settings.build_step,
                             _after(step, start))
            if writer is not None:
                writer.add(chunk)
            start += len(chunk)
        if writer is not None:
            writer.close()
    return index, quantizer_facts, vectors_file


def _assign_streamed(quantizer: faiss.Index, rows: LiveRows, step: Callable[[int], None]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`ivf.assign` over the live rows, slice by slice: 12 bytes a row are kept, not the rows. `step(0)`
    after each slice (no rows added yet), so that a cancel or a lost lease stops a long assignment."""
    tops, lists = [], []
    for chunk in rows.slices(SLICE_ROWS):
        top, assigned = ivf.assign(quantizer, chunk)
        tops.append(top)
        lists.append(assigned)
        step(0)
    if not tops:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(tops), np.concatenate(lists)


def _previous_quantizer(previous: Previous | None, model: str, dim: int) -> tuple[faiss.Index, dict] | None:
    """A copy of the published IVF version's trained quantizer and its training record, if it has one
    for the same model (read from its first part, which every IVF part shares)."""
    if previous is None or previous.manifest.get("kind") not in IVF_KINDS or "ivf_training" not in previous.manifest:
        return None
    if not same_vector_space(previous.manifest.get("model"), model) or previous.manifest.get("dim") != dim:
        return None
    if not is_format2(previous.manifest) or not previous.manifest.get("parts"):
        return None
    try:
        first = open_parts(previous.directory, part_refs(previous.directory, previous.manifest)[:1])[0]
    except (VerifyFailed, OSError):
        return None
    if first.ivf is None:
        return None
    return coarse_quantizer(first.index), previous.manifest["ivf_training"]


def _rows_of(part: LoadedPart, docs: np.ndarray) -> np.ndarray:
    """A boolean mask over the part's rows: the rows of documents `docs` (indexes into its table)."""
    marks = np.zeros(part.rows + 1, dtype=np.int32)
    np.add.at(marks, part.tables.row_start[docs], 1)
    np.add.at(marks, part.tables.row_stop[docs], -1)
    return np.cumsum(marks[:-1]) > 0


def _deleted_after(part: LoadedPart, ref: PartRef, changed: pa.Array) -> PartRef:
    """The part as this version keeps it: its rows of `changed` documents marked deleted too."""
    hit = np.flatnonzero(pc.is_in(part.tables.ids, value_set=changed).to_numpy(zero_copy_only=False))
    if not len(hit):
        return ref
    deleted = _rows_of(part, hit) if ref.deleted is None else ref.deleted | _rows_of(part, hit)
    return PartRef(ref.name, ref.offset, ref.rows, ref.sha256, deleted)


def _live_documents(part: LoadedPart, ref: PartRef) -> int:
    return len(part.tables) if ref.deleted is None else int((~ref.deleted[part.tables.row_start]).sum())


def _fold_count(live: list[int], new_rows: int) -> int:
    """How many parts at the tail the new part absorbs: each one holding at most FOLD_RATIO times the
    rows gathered so far (so part sizes stay geometric, like a binary counter, and a row is rewritten
    O(log n) times), and as many more as keep the count at MAX_PARTS. The first part is never folded."""
    fold, gathered = 0, new_rows
    while fold < len(live) - 1 and live[-1 - fold] <= FOLD_RATIO * gathered:
        gathered += live[-1 - fold]
        fold += 1
    return max(fold, len(live) + 1 - MAX_PARTS)


def _folded_rows(parts: list[LoadedPart], refs: list[PartRef]) -> tuple[list[dict], np.ndarray, dict[str, int],
                                                                        list[int]]:
    """The live rows of folded parts, read back from them: records, vectors, document -> segment, and
    the segments they cover."""
    records: list[dict] = []
    vectors: list[np.ndarray] = []
    segment_of: dict[str, int] = {}
    segments: list[int] = []
    for part, ref in zip(parts, refs, strict=True):
        live = np.ones(part.rows, dtype=bool) if ref.deleted is None else ~ref.deleted
        rows = np.flatnonzero(live)
        in_rows = part.tables.row_doc[rows]
        # Each live document once, in row order (its rows are contiguous), so records follow the vectors.
        docs = in_rows[np.r_[True, in_rows[1:] != in_rows[:-1]]] if len(in_rows) else in_rows
        for doc in docs:
            records.extend(part.tables.records_range(int(part.tables.row_start[doc]), int(part.tables.row_stop[doc])))
        vectors.append(part_vectors(part)[rows])
        ids = part.tables.ids.take(pa.array(docs)).to_pylist()
        segs = part.tables.documents["segment"].take(pa.array(docs)).to_pylist()
        segment_of.update(zip(ids, segs, strict=True))
        segments.extend(part.meta.get("segments") or [])
    return records, (np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)), segment_of, segments


def _without_empty(parts: list[LoadedPart], refs: list[PartRef]) -> tuple[list[LoadedPart], list[PartRef]]:
    """The parts that still hold a live row, at offsets renumbered in order (a part's row ids are its own,
    so a part moves freely within a version)."""
    out_parts, out_refs, offset = [], [], 0
    for part, ref in zip(parts, refs, strict=True):
        if ref.live:
            out_parts.append(part)
            out_refs.append(PartRef(ref.name, offset, ref.rows, ref.sha256, ref.deleted))
            offset += ref.rows
    return out_parts, out_refs


def incremental(svc: Services, collection: str, segments: list[int], previous: Previous, steps: Steps,
                version: int) -> Built | str:
    """The new version from the published one, or why a full build is needed instead."""
    manifest = previous.manifest
    head = published_head(svc, collection, segments, manifest["segments"])
    assert head is not None  # why_not_incremental checked it
    refs = part_refs(previous.directory, manifest)
    parts = open_parts(previous.directory, refs)
    new_segments = segments[head:]
    latest = latest_documents(svc, collection, new_segments)  # only the new segments' metadata is read
    changed = pa.array(list(latest.segment_of), type=pa.large_string())
    kept = [_deleted_after(part, ref, changed) for part, ref in zip(parts, refs, strict=True)]
    removed = sum(ref.rows - ref.live for ref in kept) - sum(ref.rows - ref.live for ref in refs)
    parts, kept = _without_empty(parts, kept)
    new_records, new_vectors = read_live(svc, collection, new_segments, latest, svc.embedder.dim)
    _strip(new_records)
    fold = _fold_count([ref.live for ref in kept], len(new_records))
    segment_of = latest.live
    part_segments = list(new_segments)
    added = len(new_records)
    if fold:
        folded_records, folded_vectors, folded_of, folded_segments = _folded_rows(parts[-fold:], kept[-fold:])
        new_records = folded_records + new_records
        new_vectors = np.concatenate([folded_vectors.reshape(-1, svc.embedder.dim), new_vectors])
        segment_of = {**folded_of, **segment_of}
        part_segments = folded_segments + part_segments
        parts, kept = parts[:-fold], kept[:-fold]
    rows = sum(ref.live for ref in kept) + len(new_records)
    total = sum(ref.rows for ref in kept) + len(new_records)
    kind = kind_for(rows, svc)
    if kind != manifest.get("kind"):
        return f"{rows} rows call for {kind}, version {previous.version} is {manifest.get('kind')}"
    if total and (total - rows) > MAX_DELETED_SHARE * total:
        return f"{total - rows} of the {total} rows in the parts are deleted"
    facts = {"kind": kind, "incremental": True, "built_from": previous.version,
             "reused_rows": sum(ref.live for ref in kept),
             "added_rows": len(new_records), "removed_rows": removed, "parts_kept": len(kept), "parts_folded": fold}
    vectors_file = None
    if kind in IVF_KINDS:
        reason = _tuning_stale(manifest, rows, svc.settings)
        if reason is not None:
            return reason
        first = parts[0].ivf if parts else None
        if first is None or "ivf_training" not in manifest:
            return f"version {previous.version} has no trained quantizer"
        quantizer = coarse_quantizer(parts[0].index)
        top, lists = ivf.assign(quantizer, new_vectors)
        # Only rows new to the collection count toward drift: folded rows were counted when first added.
        training = ivf.after_assigning(manifest["ivf_training"], top[len(new_records) - added:])
        sizes = sum((ivf.list_sizes(part.index) for part in parts), np.zeros(quantizer.ntotal, dtype=np.int64))
        reason = ivf.retrain_reason(training, rows, sizes + np.bincount(lists, minlength=quantizer.ntotal))
        if reason is not None:
            return f"quantizer retrained: {reason}"
        index = _on_published(kind, quantizer, parts[0].index)
        step = steps(len(new_records))
        ivf.add_assigned(index, new_vectors, lists, svc.settings.build_step, step)
        if kind in COMPRESSED_KINDS:
            vectors_file = _vectors_file(svc, collection, version)
            with written(vectors_file, "an index part") as fh:
                writer = NpyWriter(fh, len(new_vectors), svc.embedder.dim, ROW_DTYPES[svc.settings.rerank_rows])
                writer.add(new_vectors)
                writer.close()
        facts.update(ivf_training=training, quantizer={"reused": True, "trained_in": training["trained_in"]},
                     **{name: manifest[name] for name in TUNING if name in manifest})
    else:
        step = steps(len(new_records))
        index = build_flat(new_vectors, svc.settings.build_step, step)
    if not len(new_records):
        step(0)
    documents = sum(_live_documents(part, ref) for part, ref in zip(parts, kept, strict=True)) + \
        len({rec["doc_id"] for rec in new_records})
    # Rows the segments hold: the published version's count, or the compacted segment's that replaced them.
    base = int(manifest.get("segment_rows", 0)) if head == len(manifest["segments"]) else \
        int(svc.storage.read_segment_meta(collection, segments[0]).get("chunks", 0))
    rows_total = base + latest.rows_total
    return Built(kept, index, new_records, segment_of, part_segments, documents, rows_total, facts, vectors_file)


TUNING = ("nprobe", "rerank", "recall_at_10", "recall_target", "queries", "query_kind", "ladder", "nlist", "tuned_rows",
          "tuned_in")


def _tuning_stale(manifest: dict, rows: int, settings: Settings) -> str | None:
    """Why the published nprobe no longer holds: it was tuned for `tuned_rows` rows, or to another
    recall target, or on other queries than query-like probes, or its recall is below today's floor (a
    full build tunes again, and refuses the version if the floor is still not met)."""
    tuned = int(manifest.get("tuned_rows") or 0)
    low, high = NPROBE_ROWS
    if not tuned or not low * tuned <= rows <= high * tuned:
        return f"nprobe re-tuned: tuned for {tuned} rows, the version has {rows}"
    if manifest.get("recall_target") != settings.recall_target:
        return (f"nprobe re-tuned: tuned for recall {manifest.get('recall_target')}, the target is "
                f"{settings.recall_target}")
    if float(manifest.get("recall_at_10", 0.0)) < settings.recall_floor:
        return f"nprobe re-tuned: recall@10 {manifest.get('recall_at_10')} is below the floor {settings.recall_floor}"
    if manifest.get("query_kind") not in (ivf.PROBE_KIND, "given"):
        # Tuned on indexed rows (before query-like probes): it promised real queries far more than they get.
        return f"nprobe re-tuned: tuned on {manifest.get('query_kind')!r}, not on query-like probes"
    return None


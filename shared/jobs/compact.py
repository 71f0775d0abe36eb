"""Compaction: merge a collection's segments into one, so that a rebuild reads what is live, not the
history of edits, and disk use stays bounded under a folder that changes all day.

A rebuild that published asks for one (`maybe_compact`) once the collection has
`compact_min_segments` segments or `compact_superseded_ratio` of their rows are superseded. The job
(index queue, one per collection at a time) snapshots the segment list, writes the live rows of those
segments as one new segment (tombstones drop out: nothing older remains for them to hide), and swaps
it in with one Lua script that replaces exactly the snapshotted head of the list and repoints only the
documents still living there; segments registered meanwhile stay after it and keep winning. Ingest and
search never wait for it: ingest appends behind it, search reads index versions, and the live content
does not change, so no rebuild is needed. The replaced segment folders are deleted once the
collection's rebuild lease is seen free after the swap (a rebuild that could still read them holds it);
while one runs the job retries. Compaction never takes the lease itself, so it never delays a rebuild
or a rollback.
"""

from __future__ import annotations

import json
import logging
import time

from shared import eventnames as names
from shared.errors import LockBusy
from shared.index.embedders import vector_space
from shared.jobkinds import COMPACT
from shared.jobs.merge import SLICE_ROWS, latest_documents, live_records
from shared.jobs.submit import create_and_enqueue
from shared.jobstates import QUEUED, RUNNING, TERMINAL, new_job_id
from shared.services import Services

log = logging.getLogger(__name__)


def should_compact(svc: Services, segments: int, rows_total: int, rows_live: int) -> bool:
    s = svc.settings
    if segments < 2:
        return False
    superseded = (rows_total - rows_live) / rows_total if rows_total else 0.0
    return segments >= s.compact_min_segments or superseded >= s.compact_superseded_ratio


def request_compaction(svc: Services, collection: str) -> dict | None:
    """A compaction job for `collection`, unless one is queued or running (then None)."""
    job_id = new_job_id()
    for _ in range(2):
        other = svc.collections.claim_compaction(collection, job_id)
        if other is None:
            return create_and_enqueue(svc, COMPACT.name, collection, {}, job_id)
        if other and svc.jobs.state(other) in (QUEUED, RUNNING):
            return None
        svc.collections.release_compaction(collection, other)
    return None


def maybe_compact(svc: Services, collection: str, segments: int, rows_total: int, rows_live: int) -> None:
    if should_compact(svc, segments, rows_total, rows_live):
        job = request_compaction(svc, collection)
        if job:
            log.info("event=compact.requested collection=%s job=%s segments=%s rows=%s live=%s",
                     collection, job["id"], segments, rows_total, rows_live)


def disk_use(svc: Services, collection: str, segments: list[int]) -> int:
    return sum(svc.storage.segment_bytes(collection, seq) for seq in segments)


def run_compact(svc: Services, job_id: str) -> None:
    """Run one compaction. Raises LockBusy (the task retries) while a rebuild holds the lease at the
    deletion step; a redelivery resumes at that step."""
    raw = svc.jobs.raw(job_id)
    collection = raw["collection"]
    if raw["state"] in TERMINAL:
        svc.collections.release_compaction(collection, job_id)
        return
    if not svc.jobs.start(job_id):
        return
    try:
        if "compacted" not in raw:
            before = svc.collections.segments(collection)
            stats = {"segments_before": len(before), "bytes_before": disk_use(svc, collection, before)}
            metas = {seq: svc.storage.read_segment_meta(collection, seq) for seq in before}
            models = {str(m["model"]) for m in metas.values() if m.get("model")}
            # Runtimes of one model share a space (a calibration switches between them): one segment.
            if len(before) < 2 or len({vector_space(m) for m in models}) > 1:
                svc.jobs.succeed(job_id, {**stats, "skipped": "fewer than two segments" if len(before) < 2
                                          else "segments of several models"})
                svc.collections.release_compaction(collection, job_id)
                return
            svc.jobs.progress(job_id, names.STAGE_MERGE, 0, len(before))
            dim = next((m["dim"] for m in metas.values() if m.get("dim")), svc.embedder.dim)
            # Streamed like a full build: records read again as they are written, vectors a slice at a time.
            seq = svc.collections.next_segment_seq(collection)
            try:
                latest = latest_documents(svc, collection, before)
                records, rows = live_records(svc, collection, before, latest, dim, count_chunks=True)
                counts = records.chunks or {}
                doc_chunks = {doc: counts.get(doc, 0) for doc, seg in latest.segment_of.items() if seg is not None}
                rows_total = latest.rows_total
                del latest
                svc.jobs.progress(job_id, names.STAGE_WRITE, 0, 1)
                svc.storage.write_segment(collection, seq, records, rows.slices(SLICE_ROWS), {
                    "docs": list(doc_chunks), "tombstones": [], "model": next(iter(models), None), "dim": dim,
                    "job_id": job_id, "created_at": time.time(), "compacted_from": before})
            except FileNotFoundError:  # read again while written: a drop removed the folders meanwhile
                if svc.collections.exists(collection):
                    raise
                svc.storage.remove_segment(collection, seq)
                svc.jobs.succeed(job_id, {**stats, "skipped": "the collection was dropped meanwhile"})
                svc.collections.release_compaction(collection, job_id)
                return
            if not svc.collections.replace_segments(collection, before, seq, doc_chunks):
                svc.storage.remove_segment(collection, seq)
                svc.jobs.succeed(job_id, {**stats, "skipped": "the segment list changed (dropped meanwhile)"})
                svc.collections.release_compaction(collection, job_id)
                return
            stats.update(rows_before=rows_total, rows_after=len(records), documents=len(doc_chunks), segment=seq)
            svc.jobs.set_fields(job_id, compacted=json.dumps({"replaced": before, "stats": stats}))
        else:
            done = json.loads(raw["compacted"])
            before, stats = done["replaced"], done["stats"]
        svc.jobs.progress(job_id, names.STAGE_COLLECT, 0, len(before))
        if svc.locks.holder(collection) is not None:
            # A rebuild may have snapshotted the list before the swap and still be reading the old
            # folders. Once the lease is seen free after the swap, every such rebuild has ended (a
            # rebuild holds it from before its snapshot to its publish) and later ones read the new list.
            svc.jobs.touch(job_id)
            raise LockBusy(collection)
        for old in before:
            svc.storage.remove_segment(collection, old)
        after = svc.collections.segments(collection)
        result = {**stats, "segments_after": len(after), "bytes_after": disk_use(svc, collection, after)}
        svc.jobs.succeed(job_id, result)
        svc.collections.release_compaction(collection, job_id)
        log.info("event=compact.done job=%s collection=%s %s", job_id, collection,
                 " ".join(f"{k}={v}" for k, v in result.items()))
    except LockBusy:
        raise
    except BaseException:
        svc.collections.release_compaction(collection, job_id)
        raise

"""Submitting and canceling jobs: stage the payload, create the job, enqueue it. Used by the API and
by workers (an ingest or a delete asks for the rebuild that follows it).

Back-pressure: the API submits with `bounded=True`, so a queue holding `max_queued_<queue>` queued
jobs refuses new ones with QueueFull and nothing is created. Workers submit unbounded: the rebuild an
ingest asks for must never be lost, and coalescing keeps it to one queued rebuild per collection.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from shared.errors import JobInProgress
from shared.jobkinds import (
    DELETE,
    DROP,
    DROP_MARKER,
    INGEST,
    KINDS,
    PENDING_REBUILD,
    REBUILD,
    STAGED_BATCH,
    UPLOADED_ARCHIVE,
)
from shared.jobstates import CANCELED, QUEUED, RUNNING, TERMINAL, JobNotFound, QueueFull, new_job_id
from shared.services import Services
from shared.store.conn import confirm
from shared.tasknames import QUEUE_INDEX, QUEUE_INGEST

__all__ = ["QueueFull", "NotCancelable", "submit_documents", "request_rebuild", "submit_delete", "submit_drop",
           "drop_in_progress", "cancel_job", "cleanup_canceled", "check_capacity", "request_cancel_tree",
           "create_and_enqueue"]


def in_progress(kind: str, job_id: str) -> JobInProgress:
    return JobInProgress(kind, job_id, KINDS[kind].busy_message)


class NotCancelable(Exception):
    """The job has finished (or, for a running drop, cannot stop half-way)."""

    def __init__(self, job: dict, reason: str):
        super().__init__(reason)
        self.job, self.reason = job, reason


def queue_bound(svc: Services, queue: str) -> int:
    return {QUEUE_INGEST: svc.settings.max_queued_ingest, QUEUE_INDEX: svc.settings.max_queued_index}[queue]


def _bound(svc: Services, kind: str, bounded: bool) -> int:
    return queue_bound(svc, KINDS[kind].queue) if bounded else 0


def check_capacity(svc: Services, kind: str) -> None:
    """Raise QueueFull early, before any work (staging a large batch), when the queue is full now.
    The bound is enforced again, atomically, when the job is created."""
    queue = KINDS[kind].queue
    bound = queue_bound(svc, queue)
    depth = svc.jobs.queued_depth(queue)
    if bound and depth >= bound:
        raise QueueFull(queue, depth, bound)


def create_and_enqueue(svc: Services, kind: str, collection: str, options: dict, job_id: str | None = None,
                       bounded: bool = False) -> dict:
    """Create the job (queued; with `bounded`, only while its queue has room: QueueFull otherwise) and
    send its task."""
    job_id = job_id or new_job_id()
    job = svc.jobs.create(kind, collection, options, job_id, max_queued=_bound(svc, kind, bounded))
    # If the process dies here the job stays queued without a message; the sweeper sends it again.
    svc.enqueue(kind, job_id)
    confirm(svc.redis)  # the job and its message are on a replica before the 202
    return job


def submit_documents(svc: Services, collection: str, documents: list[dict], rebuild: bool,
                     bounded: bool = False) -> dict:
    """Stage the batch under the data dir (never inside the Celery message), create the ingest job
    and enqueue it. If enqueueing fails after the job exists, the sweeper re-enqueues it."""
    if bounded:
        check_capacity(svc, INGEST.name)
    job_id = new_job_id()
    svc.storage.write_staging(job_id, documents)
    try:
        options = {"rebuild": rebuild, "documents": len(documents)}
        return create_and_enqueue(svc, INGEST.name, collection, options, job_id, bounded)
    except QueueFull:
        svc.storage.delete_staging(job_id)
        raise


def submit_delete(svc: Services, collection: str, doc_ids: list[str], bounded: bool = False) -> dict:
    """A delete job (ingest queue): it writes a tombstone segment, then asks for a rebuild."""
    return create_and_enqueue(svc, DELETE.name, collection, {"documents": list(doc_ids), "rebuild": True},
                               new_job_id(), bounded)


def submit_drop(svc: Services, collection: str, bounded: bool = False) -> dict:
    """A drop job (index queue): removes the collection, its index, segments and pointer.

    The collection's drop marker names the job from submission to its end: a second drop meanwhile
    raises JobInProgress, and the API refuses to re-create the name half-way through."""
    if bounded:
        check_capacity(svc, DROP.name)
    job_id = new_job_id()
    for _ in range(2):
        other = svc.collections.claim_drop(collection, job_id)
        if other is None:
            break
        if other and svc.jobs.state(other) not in TERMINAL:
            raise in_progress(DROP.name, other)
        svc.collections.release_drop(collection, other)  # left by a drop that ended without clearing it
    else:
        raise in_progress(DROP.name, svc.collections.dropping_job(collection) or "")
    try:
        return create_and_enqueue(svc, DROP.name, collection, {}, job_id, bounded)
    except QueueFull:
        svc.collections.release_drop(collection, job_id)
        raise


def drop_in_progress(svc: Services, collection: str) -> str | None:
    """The id of the drop of `collection` that is queued or running, if any."""
    job_id = svc.collections.dropping_job(collection)
    if job_id and svc.jobs.state(job_id) not in TERMINAL:
        return job_id
    return None


def request_rebuild(svc: Services, collection: str, exclusive: bool,
                    bounded: bool = False, force: bool = False, allow_shrink: int = 0) -> tuple[dict, bool]:
    """A rebuild of `collection`: a new queued one, or the one already queued (coalescing).

    With `exclusive` (an explicit POST /rebuild) raises JobInProgress when a rebuild is queued or
    running. With `bounded` raises QueueFull (and frees the claimed slot) when the index queue is
    full. With `force` the new rebuild publishes what the quality gate refuses (`shared.jobs.gate`);
    `allow_shrink` documents are expected to go (a removed source's), so the shrink guard does not count
    them; a rebuild this one coalesces into gains both. Returns (job, created)."""
    if bounded:
        check_capacity(svc, REBUILD.name)
    job_id = new_job_id()
    for _ in range(3):
        claimed, other = svc.locks.claim_rebuild(collection, job_id, exclusive)
        if claimed:
            try:
                job = svc.jobs.create(REBUILD.name, collection, _gate_options({}, force, allow_shrink), job_id,
                                      max_queued=_bound(svc, REBUILD.name, bounded))
            except QueueFull:
                svc.locks.clear_pending(collection, job_id)
                raise
            svc.enqueue(REBUILD.name, job_id)
            confirm(svc.redis)
            return job, True
        if svc.jobs.state(other) in TERMINAL:
            # A pending slot left by a job that ended without clearing it (canceled while queued,
            # failed before it started): free it and claim again.
            svc.locks.clear_pending(collection, other)
            continue
        if exclusive:
            raise in_progress(REBUILD.name, other)
        options = svc.jobs.options(other)
        merged = _gate_options(options, force, allow_shrink)
        if merged != options:
            # Coalesced into a queued rebuild: it now carries this request's force or expected shrink.
            # Should that one have started meanwhile (it may have read its options before this), a new
            # one is queued with them.
            svc.jobs.set_fields(other, options=json.dumps(merged))
            if svc.locks.pending(collection) != other:
                continue
        return svc.jobs.get(other), False
    raise in_progress(REBUILD.name, other)


def _gate_options(options: dict, force: bool, allow_shrink: int) -> dict:
    """A rebuild's options with this request's override of the quality gate added."""
    merged = dict(options)
    if force:
        merged["force"] = True
    if allow_shrink > 0:
        merged["allow_shrink"] = int(merged.get("allow_shrink") or 0) + allow_shrink
    return merged


def cancel_job(svc: Services, job_id: str) -> dict:
    """Cancel a job: a queued one is canceled at once and never runs; a running one is flagged and
    stops at its next step boundary (publishing nothing). Raises JobNotFound, or NotCancelable for a
    finished job and for a drop that has started. Returns the job after the request."""
    job = svc.jobs.get(job_id)
    if job["state"] in TERMINAL:
        raise NotCancelable(job, f"the job has already {job['state']}")
    if job["state"] == RUNNING and not KINDS[job["kind"]].cancel_while_running:
        raise NotCancelable(job, f"a {job['kind']} that has started runs to its end")
    state = request_cancel_tree(svc, job_id)
    job = svc.jobs.get(job_id)
    if state != CANCELED and state != RUNNING and state != QUEUED:
        raise NotCancelable(job, f"the job has already {state}")
    return job


def request_cancel_tree(svc: Services, job_id: str, reason: str = "canceled by request") -> str:
    """Cancel a job (queued: now; running: flagged) and, when it fanned out children, each child
    still pending: queued ones never run (a worker that receives one counts it as done for its
    parent's barrier), running ones stop at their next step. Returns the job's state after it."""
    state = svc.jobs.request_cancel(job_id, reason)
    if state == CANCELED:
        cleanup_canceled(svc, svc.jobs.get(job_id))
    for child in sorted(svc.fanout.pending(job_id)):
        try:
            if svc.jobs.request_cancel(child, "its parent job was canceled") == CANCELED:
                cleanup_canceled(svc, svc.jobs.get(child))
        except JobNotFound:
            continue
    return state


# How to remove each leftover a kind names (`JobKind.leftovers`).
CLEANUPS: dict[str, Callable[[Services, dict], None]] = {
    PENDING_REBUILD: lambda svc, job: svc.locks.clear_pending(job["collection"], job["id"]),
    STAGED_BATCH: lambda svc, job: svc.storage.delete_staging(job["id"]),
    DROP_MARKER: lambda svc, job: svc.collections.release_drop(job["collection"], job["id"]),
    UPLOADED_ARCHIVE: lambda svc, job: svc.storage.upload_path(job["id"]).unlink(missing_ok=True),
}


def cleanup_canceled(svc: Services, job: dict) -> None:
    """What a job canceled while queued leaves behind (its kind's `leftovers`). The worker that
    receives its message skips it, and would clean these too."""
    for leftover in KINDS[job["kind"]].leftovers:
        CLEANUPS[leftover](svc, job)

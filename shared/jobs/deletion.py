"""Deleting: a document (a tombstone-only segment, then a coalesced rebuild) and a whole collection
(a drop: pointer, segments, index versions, documents, and the name itself)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid

import numpy as np

from shared import eventnames as names
from shared.errors import JobCanceled, JobInputError, LockBusy
from shared.jobs.submit import cleanup_canceled, request_rebuild
from shared.jobstates import CANCELED, QUEUED, RUNNING, TERMINAL
from shared.services import Services
from shared.storage import TMP_PREFIX

log = logging.getLogger(__name__)

DROP_REASON = "collection dropped"


def write_tombstones(svc: Services, job_id: str, collection: str, doc_ids: list[str]) -> int:
    """Write and register a segment that holds only tombstones for `doc_ids`; returns its seq."""
    svc.jobs.progress(job_id, names.STAGE_WRITE, 0, 1)
    seq = svc.collections.next_segment_seq(collection)
    # No chunks, so no vectors and no model: merges read tombstones from meta.json only.
    svc.storage.write_segment(collection, seq, [], np.zeros((0, 0), dtype=np.float32), {
        "docs": [], "tombstones": list(doc_ids), "model": None, "dim": 0, "job_id": job_id,
        "created_at": time.time()})
    svc.collections.register_segment(collection, seq, job_id, {doc: -1 for doc in doc_ids})
    log.info("event=delete.segment job=%s collection=%s seq=%s tombstones=%s", job_id, collection, seq, len(doc_ids))
    return seq


def run_delete(svc: Services, job_id: str) -> None:
    """Run one delete job: register a segment that holds only tombstones for the job's documents,
    then ask for the rebuild that makes the deletion visible. Safe to run again after a crash."""
    raw = svc.jobs.begin(job_id)
    if raw is None:
        return
    collection = raw["collection"]
    options = svc.jobs.options(job_id)
    doc_ids = [str(d) for d in options.get("documents", [])]
    started = time.monotonic()
    if "segment" not in raw:
        if not svc.collections.exists(collection):
            raise JobInputError(f"collection {collection!r} does not exist")
        if svc.jobs.cancel_requested(job_id):
            raise JobCanceled(job_id)
        present = svc.collections.doc_locations(collection, doc_ids)
        summary = {"requested": len(doc_ids), "deleted": len(present)}
        svc.jobs.set_fields(job_id, summary=json.dumps(summary))
        seq = write_tombstones(svc, job_id, collection, doc_ids)
    else:
        seq = int(raw["segment"])
        summary = json.loads(raw.get("summary") or "{}")
    result = {"segment": seq, **summary, "seconds": round(time.monotonic() - started, 3)}
    if options.get("rebuild", True):
        rebuild_job, _ = request_rebuild(svc, collection, exclusive=False)
        result["rebuild_job_id"] = rebuild_job["id"]
    svc.jobs.succeed(job_id, result)


def run_drop(svc: Services, job_id: str) -> None:
    """Run one drop job. Raises LockBusy (the task retries shortly; the job stays running) while a
    rebuild holds the lease or another job of the collection is still running.

    Order matters: the name leaves the set of collections first (the API answers 404 from then on,
    and ingests and rebuilds that start later fail), the collection's other jobs are canceled or
    flagged, and only when none runs are the keys and files removed, under the rebuild lease so that
    no build can publish into a collection being removed."""
    raw = svc.jobs.raw(job_id)
    if raw["state"] in TERMINAL:
        svc.collections.release_drop(raw["collection"], job_id)
        return
    collection = raw["collection"]
    svc.storage.check_collection(collection)
    if not svc.jobs.start(job_id):
        return
    svc.collections.hide(collection, job_id)
    svc.sources.remove_collection(collection)  # nothing watches or reconciles into it any more
    svc.jobs.progress(job_id, names.STAGE_STOP_JOBS, 0, 1)
    busy = []
    for other, kind, _state in svc.history.of_collection(collection, (QUEUED, RUNNING)):
        if other == job_id:
            continue
        after = svc.jobs.request_cancel(other, DROP_REASON)
        if after == CANCELED:
            cleanup_canceled(svc, {"id": other, "kind": kind, "collection": collection})
        elif after == RUNNING:
            busy.append(other)
    if busy:
        svc.jobs.touch(job_id)
        raise LockBusy(f"collection={collection} waiting for running jobs {busy}")
    lease = svc.locks.acquire(collection, job_id)
    if lease is None:
        svc.jobs.touch(job_id)
        raise LockBusy(collection)
    try:
        svc.jobs.progress(job_id, names.STAGE_REMOVE, 0, 1)
        # Move the directories aside first: a collection created again under this name right after
        # starts from empty directories, whatever the rmtree below is still doing.
        aside = []
        for path in (svc.storage.segments_dir(collection), svc.storage.indexes_dir(collection)):
            if path.is_dir():
                target = path.parent / f"{TMP_PREFIX}drop-{collection}-{uuid.uuid4().hex[:8]}"
                os.rename(path, target)
                aside.append(target)
        svc.collections.remove(collection)
        svc.storage.remove_sources(collection)
        svc.storage.remove_config(collection)
        for target in aside:
            shutil.rmtree(target, ignore_errors=True)
    finally:
        svc.locks.release(lease)
    svc.collections.release_drop(collection, job_id)
    svc.jobs.succeed(job_id, {"collection": collection, "removed_dirs": len(aside)})
    log.info("event=drop.done job=%s collection=%s", job_id, collection)

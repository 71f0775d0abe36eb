"""Submitting jobs: stage the payload, create the job, enqueue it. Used by the API and by workers
(an ingest asks for the rebuild that follows it)."""

from __future__ import annotations

from shared.jobs import TERMINAL, new_job_id
from shared.services import Services


class RebuildInProgress(Exception):
    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id


def submit_documents(svc: Services, collection: str, documents: list[dict], rebuild: bool) -> dict:
    """Stage the batch under the data dir (never inside the Celery message), create the ingest job
    and enqueue it. If enqueueing fails after the job exists, the sweeper re-enqueues it."""
    job_id = new_job_id()
    svc.storage.write_staging(job_id, documents)
    job = svc.jobs.create("ingest", collection, {"rebuild": rebuild, "documents": len(documents)}, job_id)
    svc.enqueue("ingest", job_id)
    return job


def request_rebuild(svc: Services, collection: str, exclusive: bool) -> tuple[dict, bool]:
    """A rebuild of `collection`: a new queued one, or the one already queued (coalescing).

    With `exclusive` (an explicit POST /rebuild) raises RebuildInProgress when a rebuild is queued or
    running. Returns (job, created)."""
    job_id = new_job_id()
    for _ in range(2):
        claimed, other = svc.locks.claim_rebuild(collection, job_id, exclusive)
        if claimed:
            job = svc.jobs.create("rebuild", collection, {}, job_id)
            svc.enqueue("rebuild", job_id)
            return job, True
        if svc.jobs.state(other) in TERMINAL:
            # A pending slot left by a job that ended without clearing it (canceled while queued,
            # failed before it started): free it and claim again.
            svc.locks.clear_pending(collection, other)
            continue
        if exclusive:
            raise RebuildInProgress(other)
        return svc.jobs.get(other), False
    raise RebuildInProgress(other)

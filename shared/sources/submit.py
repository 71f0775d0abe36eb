"""Adding and removing sources and submitting their reconciles, from the API and the watcher.

A source has at most one reconcile queued or running at a time: its slot (`SourceStore.claim_reconcile`)
names that job, so a second request gets ReconcileInProgress with its id (the API answers 409)."""

from __future__ import annotations

from shared.errors import JobInProgress
from shared.jobs.model import QUEUED, RUNNING, QueueFull, new_job_id
from shared.jobs.submit import check_capacity, queue_bound
from shared.services import Services
from shared.sources.paths import resolve_source_path
from shared.tasknames import KINDS


class ReconcileInProgress(JobInProgress):
    def __init__(self, job_id: str):
        super().__init__("reconcile", job_id, "a reconcile of this source is already queued or running")


class SourceConflict(Exception):
    """Another source of the collection has the same folder or the same id prefix."""

    def __init__(self, source_id: str, message: str):
        super().__init__(message)
        self.source_id, self.message = source_id, message


def add_source(svc: Services, collection: str, path: str, include: list[str], exclude: list[str],
               watch: bool, prefix: str = "") -> tuple[dict, dict]:
    """Check the path (SourcePathRefused), record the source and submit its first reconcile.
    Returns (source, job)."""
    folder = resolve_source_path(svc.settings, path)
    for other in svc.sources.of_collection(collection):
        if other["path"] == str(folder):
            raise SourceConflict(other["id"], f"the collection already follows {folder} (source {other['id']})")
        if other["prefix"] == prefix:
            raise SourceConflict(other["id"], f"source {other['id']} already uses the document id prefix "
                                              f"{prefix!r}; give this one another `prefix`")
    check_capacity(svc, "reconcile")
    source = svc.sources.create(collection, str(folder), include, exclude, watch, prefix)
    job = submit_reconcile(svc, source, bounded=True)
    return source, job


def _live(svc: Services, job_id: str | None) -> bool:
    return bool(job_id) and svc.jobs.state(job_id) in (QUEUED, RUNNING)


def submit_reconcile(svc: Services, source: dict, paths: list[str] | None = None, bounded: bool = False) -> dict:
    """A reconcile of the whole source, or only of `paths` (relative; the watcher's changes). Raises
    ReconcileInProgress when one is queued or running, QueueFull (bounded) when its queue is full."""
    job_id = new_job_id()
    for _ in range(3):
        other = svc.sources.claim_reconcile(source["id"], job_id)
        if other is None:
            break
        if _live(svc, other):
            raise ReconcileInProgress(other)
        svc.sources.release_reconcile(source["id"], other)  # left by a job that has finished
    else:
        raise ReconcileInProgress(svc.sources.reconcile_holder(source["id"]) or "")
    options = {"source": source["id"], "paths": sorted(set(paths)) if paths is not None else None}
    bound = queue_bound(svc, KINDS["reconcile"][1]) if bounded else 0
    try:
        job = svc.jobs.create("reconcile", source["collection"], options, job_id, max_queued=bound)
    except QueueFull:
        svc.sources.release_reconcile(source["id"], job_id)
        raise
    svc.enqueue("reconcile", job_id)
    return job


def remove_source(svc: Services, source: dict, bounded: bool = False) -> dict:
    """Stop watching now, and submit the job that removes the source's documents and then the
    source itself (it first stops a running reconcile of the source)."""
    if bounded:
        check_capacity(svc, "reconcile")
    svc.sources.set_watch(source["id"], False)
    bound = queue_bound(svc, KINDS["reconcile"][1]) if bounded else 0
    job = svc.jobs.create("reconcile", source["collection"], {"source": source["id"], "remove": True},
                          new_job_id(), max_queued=bound)
    svc.enqueue("reconcile", job["id"])
    return job

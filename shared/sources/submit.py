"""Adding and removing sources and submitting their reconciles, from the API and the watcher.

A source has at most one reconcile queued or running at a time: its slot (`SourceStore.claim_reconcile`)
names that job, so a second request gets JobInProgress with its id (the API answers 409)."""

from __future__ import annotations

from shared.jobkinds import RECONCILE
from shared.jobs.fromdisk import save_sources
from shared.jobs.submit import check_capacity, create_and_enqueue, in_progress
from shared.jobstates import QUEUED, RUNNING, QueueFull, new_job_id
from shared.services import Services
from shared.sources.paths import SourcePathRefused, resolve_source_path
from shared.sources.walk import pattern_problem


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
    for pattern in [*include, *exclude]:
        problem = pattern_problem(pattern)
        if problem:
            raise SourcePathRefused(422, "invalid_pattern", f"pattern {pattern!r}: {problem}")
    for other in svc.sources.of_collection(collection):
        if other["path"] == str(folder):
            raise SourceConflict(other["id"], f"the collection already follows {folder} (source {other['id']})")
        if other["prefix"] == prefix:
            raise SourceConflict(other["id"], f"source {other['id']} already uses the document id prefix "
                                              f"{prefix!r}; give this one another `prefix`")
    check_capacity(svc, RECONCILE.name)
    source = svc.sources.create(collection, str(folder), include, exclude, watch, prefix)
    save_sources(svc, collection)  # kept in the data dir too, for recover and snapshots
    job = submit_reconcile(svc, source, bounded=True)
    return source, job


def _live(svc: Services, job_id: str | None) -> bool:
    if not job_id:
        return False
    return svc.jobs.state(job_id) in (QUEUED, RUNNING)


def submit_reconcile(svc: Services, source: dict, paths: list[str] | None = None, bounded: bool = False) -> dict:
    """A reconcile of the whole source, or only of `paths` (relative; the watcher's changes). Raises
    JobInProgress when one is queued or running, QueueFull (bounded) when its queue is full."""
    job_id = new_job_id()
    for _ in range(3):
        other = svc.sources.claim_reconcile(source["id"], job_id)
        if other is None:
            break
        if _live(svc, other):
            raise in_progress(RECONCILE.name, other)
        svc.sources.release_reconcile(source["id"], other)  # left by a job that has finished
    else:
        raise in_progress(RECONCILE.name, svc.sources.reconcile_holder(source["id"]) or "")
    options = {"source": source["id"], "paths": sorted(set(paths)) if paths is not None else None}
    try:
        return create_and_enqueue(svc, RECONCILE.name, source["collection"], options, job_id, bounded)
    except QueueFull:
        svc.sources.release_reconcile(source["id"], job_id)
        raise


def remove_source(svc: Services, source: dict, bounded: bool = False) -> dict:
    """Stop watching now, and submit the job that removes the source's documents and then the
    source itself (it first stops a running reconcile of the source)."""
    if bounded:
        check_capacity(svc, RECONCILE.name)
    svc.sources.set_watch(source["id"], False)
    save_sources(svc, source["collection"])
    return create_and_enqueue(svc, RECONCILE.name, source["collection"], {"source": source["id"], "remove": True},
                              bounded=bounded)

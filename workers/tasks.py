"""Thin tasks: parse the job id, call the domain code in `shared/`, map the outcome to a job state."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded

from shared import tasknames
from shared.errors import JobCanceled, JobInputError, LockBusy, TryAgain
from shared.index.versions import collect_versions
from shared.jobs.compact import run_compact
from shared.jobs.deletion import run_delete, run_drop
from shared.jobs.ingest import run_ingest
from shared.jobs.model import JobNotFound
from shared.jobs.rebuild import run_rebuild
from shared.jobs.sweep import sweep as run_sweep
from shared.names import is_job_id
from shared.sources.batch import run_batch
from shared.sources.reconcile import run_reconcile
from workers.celery_app import app, services

log = logging.getLogger(__name__)


def _run(job_id: str, work: Callable, on_busy: Callable[[], None] | None = None,
         on_retry: Callable[[TryAgain], None] | None = None) -> None:
    if not is_job_id(job_id):
        log.error("event=task.bad_id job=%r", job_id)
        return
    svc = services()
    try:
        work(svc, job_id)
    except JobNotFound:
        log.warning("event=task.unknown_job job=%s", job_id)
    except JobCanceled:
        svc.jobs.cancel(job_id, "canceled by request")
        log.info("event=task.canceled job=%s", job_id)
    except LockBusy:
        if on_busy is None:
            raise
        on_busy()
    except TryAgain as again:
        if on_retry is None:
            raise
        on_retry(again)
    except JobInputError as exc:
        svc.jobs.fail(job_id, str(exc))
        log.warning("event=task.failed job=%s error=%r", job_id, str(exc))
    except SoftTimeLimitExceeded:
        svc.jobs.fail(job_id, f"time limit of {svc.settings.task_soft_time_limit}s exceeded")
        raise
    except Exception as exc:
        svc.jobs.fail(job_id, f"{type(exc).__name__}: {exc}")
        log.exception("event=task.error job=%s", job_id)
        raise


@app.task(name=tasknames.INGEST)
def ingest(job_id: str) -> None:
    _run(job_id, run_ingest)


@app.task(name=tasknames.REBUILD, bind=True, max_retries=None)
def rebuild(self, job_id: str) -> None:
    def busy() -> None:
        # Another rebuild of the collection runs: this one stays queued and tries again shortly.
        raise self.retry(countdown=services().settings.rebuild_retry_seconds)

    _run(job_id, run_rebuild, on_busy=busy)


@app.task(name=tasknames.DELETE_DOCUMENTS)
def delete_documents(job_id: str) -> None:
    _run(job_id, run_delete)


@app.task(name=tasknames.DROP_COLLECTION, bind=True, max_retries=None)
def drop_collection(self, job_id: str) -> None:
    def busy() -> None:
        # A rebuild holds the lease or another job of the collection is stopping: try again shortly.
        raise self.retry(countdown=services().settings.rebuild_retry_seconds)

    _run(job_id, run_drop, on_busy=busy)


@app.task(name=tasknames.RECONCILE, bind=True, max_retries=None)
def reconcile(self, job_id: str) -> None:
    """Walk a source and fan its changes out (shared.sources.reconcile); returns at once, never waiting
    for its children. A source removal waits here (retried) for the source's reconcile to stop."""
    def busy() -> None:
        raise self.retry(countdown=services().settings.rebuild_retry_seconds)

    _run(job_id, run_reconcile, on_busy=busy)


@app.task(name=tasknames.INGEST_FILES, bind=True, max_retries=None)
def ingest_files(self, job_id: str) -> None:
    """One batch of a reconcile. A transient failure retries this batch alone, waiting longer each time;
    after SWAPLINE_SOURCE_BATCH_RETRIES retries the batch fails and its parent names its files."""
    settings = services().settings
    final = self.request.retries >= settings.source_batch_retries

    def again(_: TryAgain) -> None:
        raise self.retry(countdown=settings.source_retry_seconds * 2 ** self.request.retries)

    _run(job_id, lambda svc, j: run_batch(svc, j, final_attempt=final, worker=self.request.hostname or ""),
         on_retry=again)


@app.task(name=tasknames.COMPACT, bind=True, max_retries=None)
def compact(self, job_id: str) -> None:
    """Merge a collection's segments (shared.jobs.compact); waits out a rebuild before deleting the old ones."""
    def busy() -> None:
        raise self.retry(countdown=services().settings.rebuild_retry_seconds)

    _run(job_id, run_compact, on_busy=busy)


@app.task(name=tasknames.SWEEP)
def sweep() -> dict:
    """Expire old jobs, re-send lost or stale ones, remove orphaned staged batches (shared.jobs.sweep)."""
    return run_sweep(services())


@app.task(name=tasknames.COLLECT_VERSIONS)
def collect_old_versions() -> dict:
    """Delete index versions not among the last K and served by no live API process."""
    svc = services()
    return {name: collect_versions(svc, name) for name in svc.collections.names()}

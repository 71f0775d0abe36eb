"""Thin tasks: parse the job id, call the domain code in `shared/`, map the outcome to a job state."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded

from shared import tasknames
from shared.errors import JobCanceled, JobInputError, LockBusy
from shared.index.versions import collect_versions
from shared.jobs.deletion import run_delete, run_drop
from shared.jobs.ingest import run_ingest
from shared.jobs.model import JobNotFound
from shared.jobs.rebuild import run_rebuild
from shared.jobs.sweep import sweep as run_sweep
from shared.names import is_job_id
from shared.webhooks.delivery import PENDING, deliver, dispatch
from workers.celery_app import app, services

log = logging.getLogger(__name__)


def _run(job_id: str, work: Callable, on_busy: Callable[[], None] | None = None) -> None:
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


@app.task(name=tasknames.SWEEP)
def sweep() -> dict:
    """Expire old jobs, re-send lost or stale ones, remove orphaned staged batches (shared.jobs.sweep)."""
    return run_sweep(services())


@app.task(name=tasknames.COLLECT_VERSIONS)
def collect_old_versions() -> dict:
    """Delete index versions not among the last K and served by no live API process."""
    svc = services()
    return {name: collect_versions(svc, name) for name in svc.collections.names()}


@app.task(name=tasknames.WEBHOOK_DISPATCH)
def webhooks_dispatch() -> int:
    """Fan new events out into webhook deliveries (shared.webhooks.delivery.dispatch)."""
    return dispatch(services(), lambda delivery_id: webhooks_deliver.apply_async(args=[delivery_id]))


@app.task(name=tasknames.WEBHOOK_DELIVER, bind=True, max_retries=None)
def webhooks_deliver(self, delivery_id: str) -> str:
    """One attempt at a delivery; a failed attempt comes back after an exponential backoff. The attempt
    count lives in the delivery record, so a redelivered message does not start the count over."""
    if not is_job_id(delivery_id):  # the same 32 hex digits as a job id
        log.error("event=task.bad_id delivery=%r", delivery_id)
        return "skipped"
    outcome = deliver(services(), delivery_id)
    if outcome.state == PENDING:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.state

"""Thin tasks: parse the job id, call the domain code in `shared/`, map the outcome to a job state."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from shared import jobkinds, tasknames
from shared.backoff import doubling
from shared.errors import JobCanceled, JobInputError, LockBusy, TryAgain
from shared.jobkinds import JobKind
from shared.jobs import upgrade
from shared.jobs.compact import run_compact
from shared.jobs.deletion import run_delete, run_drop
from shared.jobs.evaluation import run_eval
from shared.jobs.fromdisk import run_recover
from shared.jobs.housekeeping import collect_all
from shared.jobs.ingest import run_ingest
from shared.jobs.liveness import another_run_is_live, runner_id
from shared.jobs.rebuild import run_rebuild
from shared.jobs.snapshots import run_restore, run_snapshot
from shared.jobs.sweep import sweep as run_sweep
from shared.jobstates import JobNotFound
from shared.names import is_job_id
from shared.sources.batch import run_batch
from shared.sources.reconcile import run_reconcile
from shared.storage import StorageFull
from shared.store.conn import confirm
from shared.store.locks import LeaseLost
from shared.store.pointers import PublishRefused
from shared.webhooks.delivery import PENDING, deliver, dispatch
from workers.celery_app import app, keepalive, services

log = logging.getLogger(__name__)

# A job hit by a Redis outage (a restart, a failover) runs again from its last safe point once Redis
# answers, with growing pauses (jittered, 1 s doubling to 30 s), for as long as the outage lasts: the
# task's soft time limit ends it in the worst case. Its message stays unacked meanwhile, and every job
# step is safe to run again. Nothing is written to the job during the outage: Redis is what is down.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


def _transient_retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(cap=30.0, base=1.0), retries=-1, supported_errors=TRANSIENT)


def _run(job_id: str, work: Callable, on_busy: Callable[[], None] | None = None,
         on_retry: Callable[[TryAgain], None] | None = None) -> None:
    if not is_job_id(job_id):
        log.error("event=task.bad_id job=%r", job_id)
        return
    svc = services()

    def report(error: Exception) -> None:
        log.warning("event=task.redis_unavailable job=%s error=%r (running it again once Redis answers)",
                    job_id, str(error))

    # Ends this process could not record (Redis went down as the attempt ended), recorded with the next
    # begin, so an attempt cut short by an outage is not mistaken for one lost with its worker.
    unrecorded = [0]
    _transient_retry().call_with_retry(lambda: _attempt(svc, job_id, work, on_busy, on_retry, unrecorded), report)


def _attempt(svc, job_id: str, work: Callable, on_busy: Callable[[], None] | None,
             on_retry: Callable[[TryAgain], None] | None, unrecorded: list[int]) -> None:
    try:
        upgrade.ensure(svc)  # a release never works on a data dir or Redis newer than it reads
    except upgrade.LayoutTooNew as exc:
        log.error("event=task.layout_too_new job=%s error=%r (left queued for a release that reads it)",
                  job_id, str(exc))
        return
    me = runner_id()
    if another_run_is_live(svc, job_id, me):
        log.warning("event=task.duplicate job=%s (another run of the job is alive; this delivery does nothing)",
                    job_id)
        return
    executions, lost = svc.jobs.begin_attempt(job_id, me, ended_meanwhile=unrecorded[0])
    unrecorded[0] = 0
    try:
        if lost >= svc.settings.job_max_attempts:
            svc.jobs.fail(job_id, f"gave up after {executions - 1} attempts: the worker running the job was lost "
                                  f"each time (killed or crashed; SWAPLINE_JOB_MAX_ATTEMPTS="
                                  f"{svc.settings.job_max_attempts})")
            log.error("event=task.gave_up job=%s attempts=%s", job_id, executions - 1)
            return
        with keepalive().working_on(job_id):
            _outcome(svc, job_id, work, on_busy, on_retry)
    finally:
        # Not reached when the process dies: an execution without its end is a lost one.
        try:
            svc.jobs.end_attempt(job_id, me)
        except TRANSIENT:
            unrecorded[0] += 1
            raise
    # The task is acked when this returns: what the attempt wrote (a segment registered, a job's end)
    # must be on a replica first, or a failover could lose it with the message already gone.
    confirm(svc.redis)


def _outcome(svc, job_id: str, work: Callable, on_busy: Callable[[], None] | None,
             on_retry: Callable[[TryAgain], None] | None) -> None:
    """Run the work and map what it raised to the job's state."""
    try:
        work(svc, job_id)
    except TRANSIENT:
        raise  # handled by _run: the job is neither failed nor touched
    except JobNotFound:
        log.warning("event=task.unknown_job job=%s", job_id)
    except JobCanceled:
        svc.jobs.cancel(job_id, "canceled by request")
        log.info("event=task.canceled job=%s", job_id)
    except LockBusy:
        if on_busy is None:
            raise
        on_busy()
    except (LeaseLost, PublishRefused) as exc:
        if isinstance(exc, PublishRefused) and exc.reason not in PublishRefused.SUPERSEDED:
            svc.jobs.fail(job_id, f"publish refused: {exc.reason}")
            raise
        # Another run of the job took the lease over (this worker was paused or cut off past its lease,
        # and the job was sent again): that run owns the job now, so this one leaves it alone.
        log.warning("event=task.superseded job=%s reason=%r", job_id, str(exc))
    except StorageFull as exc:
        svc.jobs.fail(job_id, str(exc), retryable=True)
        log.warning("event=task.failed job=%s retryable=1 error=%r", job_id, str(exc))
    except TryAgain as again:
        if on_retry is None:
            raise
        on_retry(again)
    except JobInputError as exc:
        svc.jobs.fail(job_id, str(exc), result=exc.result)
        log.warning("event=task.failed job=%s error=%r", job_id, str(exc))
    except SoftTimeLimitExceeded:
        svc.jobs.fail(job_id, f"time limit of {svc.settings.task_soft_time_limit}s exceeded")
        raise
    except Exception as exc:
        svc.jobs.fail(job_id, f"{type(exc).__name__}: {exc}")
        log.exception("event=task.error job=%s", job_id)
        raise


def job_task(kind: JobKind, work: Callable) -> Task:
    """The task of a job kind: registered under the kind's name, running `work(svc, job_id)` through
    `_run`; a kind that `retry_when_busy` waits out a held lock (LockBusy) by retrying shortly, its job
    staying as it is."""

    def run(self: Task, job_id: str) -> None:
        def busy() -> None:
            raise self.retry(countdown=services().settings.rebuild_retry_seconds)

        _run(job_id, work, on_busy=busy if kind.retry_when_busy else None)

    run.__name__ = run.__qualname__ = kind.name
    return app.task(name=kind.task, bind=True, max_retries=None)(run)


ingest = job_task(jobkinds.INGEST, run_ingest)
rebuild = job_task(jobkinds.REBUILD, run_rebuild)
delete_documents = job_task(jobkinds.DELETE, run_delete)
drop_collection = job_task(jobkinds.DROP, run_drop)
# Walks a source and fans its changes out (shared.sources.reconcile); returns at once, never waiting for
# its children.
reconcile = job_task(jobkinds.RECONCILE, run_reconcile)
compact = job_task(jobkinds.COMPACT, run_compact)
# Registers what the data dir holds and Redis does not (shared.jobs.fromdisk); not the liveness recovery.
recover = job_task(jobkinds.RECOVER, run_recover)
snapshot = job_task(jobkinds.SNAPSHOT, run_snapshot)
restore = job_task(jobkinds.RESTORE, run_restore)
evaluate = job_task(jobkinds.EVAL, run_eval)


@app.task(name=jobkinds.INGEST_FILES.task, bind=True, max_retries=None)
def ingest_files(self, job_id: str) -> None:
    """One batch of a reconcile. A transient failure retries this batch alone, waiting longer each time;
    after SWAPLINE_SOURCE_BATCH_RETRIES retries the batch fails and its parent names its files."""
    settings = services().settings
    final = self.request.retries >= settings.source_batch_retries

    def again(_: TryAgain) -> None:
        raise self.retry(countdown=doubling(settings.source_retry_seconds, self.request.retries + 1))

    _run(job_id, lambda svc, j: run_batch(svc, j, final_attempt=final, worker=self.request.hostname or ""),
         on_retry=again)


@app.task(name=tasknames.SWEEP)
def sweep() -> dict:
    """Expire old jobs, re-send lost or stale ones, remove orphaned staged batches (shared.jobs.sweep)."""
    return run_sweep(services())


@app.task(name=tasknames.COLLECT_VERSIONS)
def collect_old_versions() -> dict:
    """Delete index versions not among the last K and served by no live API process."""
    return collect_all(services()) or {"skipped": True}


@app.task(name=tasknames.WEBHOOK_DISPATCH)
def webhooks_dispatch() -> int:
    """Fan new events out into webhook deliveries (shared.webhooks.delivery.dispatch)."""
    return dispatch(services(), app.send_delivery)


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

"""Keeping jobs moving: recovery of jobs whose worker or message is gone, and the periodic sweep.

`recover` (every worker runs it every `keepalive_seconds` from its housekeeping thread, see
`workers/housekeeping.py`; beat is not needed) sends again

- the task of a job left `queued` for `lock_ttl_seconds` whose message is nowhere in the broker (the
  API died between creating the job and enqueueing it), or was delivered more than `lock_ttl_seconds`
  ago and is still unacked with no run started: its worker dropped it. A worker that loses its broker
  connection (a Redis restart, a failover) forgets the ETA retries and prefetched messages it held
  while their unacked copies stay, and kombu would restore them only after the visibility timeout
  (70 min by default). A live worker never holds a queued job that long: with late acks it prefetches
  only as many messages as it has processes, which start at once, and a job waiting out a lock is sent
  again every `rebuild_retry_seconds`, a fresh delivery each time. The old delivery is dropped first,
  and a duplicate delivery of a job whose run is alive does nothing anyway;
- the task of a `running` job not heard from for `lock_ttl_seconds` (its worker's keepalive thread
  refreshes the heartbeat every quarter of that while it lives, so silence means the worker is gone),
  first dropping its unacked delivery so kombu does not bring it back later. A rebuild or drop whose
  lease is still alive is not stale. The task's start takes an already running job as a resume; the
  rebuild lease and the fence checked at publish keep a resumed rebuild safe, and a job lost with its
  worker `job_max_attempts` times fails instead (`workers/tasks.py`).

So a job whose worker died is sent again within about twice the lease (silence for one lease, then
the next check), whether or not beat runs.

`sweep` (the housekeeping thread every `sweep_interval`, or the `swapline.sweep` task) also deletes
finished jobs older than `job_ttl_seconds` (keeping the newest `jobs_keep_per_collection` of every
collection) and removes staged batches nobody will read (their job finished or never came to exist).

"Nowhere in the broker" is read from kombu's Redis layout (`shared.store.broker`). The check runs
twice, a moment apart, so a message in flight between a queue list and the unacked hash is not
mistaken for a lost one. One lock (`recover_lock`) makes concurrent checks on many workers harmless.
"""

from __future__ import annotations

import logging
import shutil
import time

from shared.jobkinds import KINDS
from shared.jobstates import QUEUED, RUNNING, TERMINAL
from shared.names import JOB_ID_IN_TEXT
from shared.services import Services
from shared.storage import TMP_PREFIX
from shared.tasknames import QUEUES

log = logging.getLogger(__name__)

def _stale_candidates(svc: Services, stale_before: float) -> list[dict]:
    """Queued jobs older than the threshold and running jobs whose heartbeat is older."""
    ids = [(job_id, QUEUED) for queue in QUEUES for job_id in svc.jobs.queued_ids(queue)]
    ids += [(job_id, RUNNING) for job_id in svc.jobs.running_ids()]
    if not ids:
        return []
    rows = svc.jobs.fields_many([job_id for job_id, _ in ids], "state", "kind", "collection", "heartbeat",
                                "created_at", "requeued_at")
    out = []
    for (job_id, listed), fields in zip(ids, rows, strict=True):
        state, kind, collection, heartbeat, created_at, requeued_at = fields
        if listed == RUNNING and state != RUNNING:
            svc.jobs.forget_running(job_id)  # finished by the publish script, or deleted
            continue
        if state != listed or not kind:
            continue
        if max(float(heartbeat or created_at or 0), float(requeued_at or 0)) >= stale_before:
            continue  # heard from, or sent again, within the last lease
        if state == RUNNING and kind in KINDS and KINDS[kind].holds_lease:
            holder = svc.locks.holder(collection) if collection else None  # every lease has a collection
            if holder and holder["job_id"] == job_id:
                continue  # the lease is alive, so its worker is too
        out.append({"id": job_id, "state": state, "kind": kind})
    return out


def _lost(candidates: list[dict], waiting: set[str], taken: dict[str, list[tuple[str, float]]],
          stale_before: float) -> list[dict]:
    lost = []
    for job in candidates:
        if job["id"] in waiting:
            continue  # a worker will get it
        deliveries = taken.get(job["id"], [])
        if any(at >= stale_before for _, at in deliveries):
            continue  # a worker took it recently (an ETA retry, the redelivery of a running job)
        lost.append(job)
    return lost


def requeue_lost(svc: Services, now: float | None = None, recheck_delay: float = 0.5) -> list[str]:
    """Send again the tasks of queued and running jobs whose message or worker is lost. Returns their
    ids. Callers hold `recover_lock` (see `recover`)."""
    now = now if now is not None else time.time()
    stale_before = now - svc.settings.lock_ttl_seconds
    candidates = _stale_candidates(svc, stale_before)
    if not candidates:
        return []
    lost = _lost(candidates, *svc.broker.snapshot(), stale_before)
    if not lost:
        return []
    time.sleep(recheck_delay)
    still = {job["id"] for job in _stale_candidates(svc, stale_before)}
    waiting, taken = svc.broker.snapshot()
    requeued = []
    for job in _lost([j for j in lost if j["id"] in still], waiting, taken, stale_before):
        # The old delivery must not come back later (kombu restores unacked messages after the
        # visibility timeout): forget it, then send the job again.
        tags = [tag for tag, _ in taken.get(job["id"], [])]
        svc.broker.forget_deliveries(tags)
        svc.jobs.mark_requeued(job["id"])
        svc.enqueue(job["kind"], job["id"])
        requeued.append(job["id"])
        log.warning("event=sweep.requeued job=%s kind=%s state=%s dropped_deliveries=%s",
                    job["id"], job["kind"], job["state"], len(tags))
    return requeued


def remove_orphan_staging(svc: Services, now: float | None = None) -> int:
    """Delete staged batches older than the stale threshold whose job finished or does not exist."""
    now = now if now is not None else time.time()
    folder = svc.storage.root / "staging"
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        try:
            if path.stat().st_mtime >= now - svc.settings.sweep_stale_seconds:
                continue
        except FileNotFoundError:
            continue
        name = path.name.removeprefix(TMP_PREFIX).removesuffix(".jsonl").removesuffix(".tar")  # .tar: an upload
        state = svc.jobs.state(name) if JOB_ID_IN_TEXT.fullmatch(name) else None
        if path.name.startswith(TMP_PREFIX) or state is None or state in TERMINAL:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_orphan_restores(svc: Services, now: float | None = None) -> int:
    """Delete what killed restore and snapshot jobs left behind: folders under restoring/, and under
    snapshots/ temporary archives and sidecars whose archive never got its name, once they are older
    than the hard task time limit (no job can still be writing them)."""
    now = now if now is not None else time.time()
    leftovers = list(svc.storage.restoring_dir().glob("*")) if svc.storage.restoring_dir().is_dir() else []
    snapshots = svc.storage.root / "snapshots"
    if snapshots.is_dir():
        leftovers += snapshots.glob(f"*/{TMP_PREFIX}*")
        leftovers += [p for p in snapshots.glob("*/*.json") if not p.with_suffix(".tar").exists()]
    removed = 0
    for path in leftovers:
        try:
            if path.stat().st_mtime >= now - svc.settings.task_time_limit:
                continue
        except FileNotFoundError:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def recover(svc: Services, now: float | None = None, recheck_delay: float = 0.5) -> list[str] | None:
    """Send again the jobs whose message or worker is lost; None when another check runs right now."""
    token = svc.recover_lock.acquire(max(30, svc.settings.lock_ttl_seconds))
    if token is None:
        return None
    try:
        return requeue_lost(svc, now, recheck_delay)
    finally:
        svc.recover_lock.release(token)


def sweep(svc: Services, now: float | None = None, recheck_delay: float = 0.5) -> dict:
    """One sweep; skipped (returns {"skipped": True}) while another one runs."""
    token = svc.sweep_lock.acquire(max(60, svc.settings.sweep_stale_seconds))
    if token is None:
        return {"skipped": True}
    try:
        started = time.monotonic()
        expired = svc.history.cleanup(svc.settings.job_ttl_seconds, svc.settings.jobs_keep_per_collection, now)
        requeued = recover(svc, now, recheck_delay) or []
        staging = remove_orphan_staging(svc, now) + remove_orphan_restores(svc, now)
        result = {"expired": expired, "requeued": requeued, "staging_removed": staging,
                  "seconds": round(time.monotonic() - started, 3)}
        log.info("event=sweep.done expired=%s requeued=%s staging_removed=%s seconds=%s",
                 expired, len(requeued), staging, result["seconds"])
        return result
    finally:
        svc.sweep_lock.release(token)

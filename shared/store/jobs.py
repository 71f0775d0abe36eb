"""Job hashes: one owner for every job and every transition.

Each transition is one Lua script that checks the current state, sets the new one and appends the
event, so it happens once whatever races. (The rebuild's final running -> succeeded happens inside the
publish script in `shared.store.pointers`, with the same rule, so that pointer and job change
together.) Reading jobs back in bulk (listing, retention, recent) is `shared.store.history`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

from shared import eventnames as names
from shared import keys
from shared.jobkinds import KINDS
from shared.jobstates import (
    CANCELED,
    EVENT_FOR_STATE,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    JobNotFound,
    QueueFull,
    allowed_from,
    new_job_id,
    public,
)
from shared.store.conn import load_script
from shared.store.events import EventLog
from shared.tasknames import QUEUES

log = logging.getLogger(__name__)


def job_hashes(client: redis.Redis, job_ids: list[str]) -> list[dict]:
    """The raw fields of each job, in order, in one round trip ({} for jobs that are gone)."""
    if not job_ids:
        return []
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(keys.job(job_id))
    return pipe.execute()


class JobStore:
    """Reads and changes job hashes. Every write to a job goes through this class."""

    def __init__(self, client: redis.Redis, events_max_len: int):
        self.r = client
        self.events = EventLog(client, events_max_len)
        self._transition = load_script(client, "transition")
        self._create = load_script(client, "create_job")

    # creation and reads

    def create(self, kind: str, collection: str, options: dict | None = None, job_id: str | None = None,
               max_queued: int = 0) -> dict:
        """Create a job in state queued and record `job.queued`. The caller enqueues it afterwards.

        With `max_queued` > 0 the job is created only while its queue holds fewer queued jobs than
        that (checked and created in one script); otherwise raises QueueFull and creates nothing."""
        job_id = job_id or new_job_id()
        queue = KINDS[kind].queue
        now = time.time()
        fields = {
            "id": job_id, "kind": kind, "collection": collection, "queue": queue, "state": QUEUED,
            "stage": names.STAGE_QUEUED, "done": 0, "total": 0, "created_at": now, "heartbeat": now,
            "options": json.dumps(options or {}),
        }
        argv: list = [max(0, int(max_queued)), job_id, now, self.events.max_len, collection, kind,
                      EVENT_FOR_STATE[QUEUED], QUEUED]
        for name, value in fields.items():
            argv += [name, value]
        created, depth = self._create(
            keys=[keys.job(job_id), keys.jobs(), keys.collection_jobs(collection), keys.queued(queue),
                  keys.events()],
            args=argv)
        if int(created) == 0:
            raise QueueFull(queue, int(depth), int(max_queued))
        if int(created) < 0:
            raise ValueError(f"job {job_id} exists")
        return self.get(job_id)

    def raw(self, job_id: str) -> dict:
        data = self.r.hgetall(keys.job(job_id))
        if not data:
            raise JobNotFound(job_id)
        return data

    def get(self, job_id: str) -> dict:
        """The job as the API shows it."""
        return public(self.raw(job_id))

    def find(self, job_id: str) -> dict | None:
        """The job's raw fields, None when there is no such job."""
        return self.r.hgetall(keys.job(job_id)) or None

    def field(self, job_id: str, name: str) -> str | None:
        return cast(str | None, self.r.hget(keys.job(job_id), name))

    def fields_many(self, job_ids: list[str], *names: str) -> list[list[str | None]]:
        """The named fields of each job, in order (None for absent jobs or fields)."""
        if not job_ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(keys.job(job_id), *names)
        return pipe.execute()

    def raw_many(self, job_ids: list[str]) -> list[dict]:
        """The raw fields of each job, in order ({} for jobs that are gone)."""
        return job_hashes(self.r, job_ids)

    def options(self, job_id: str) -> dict:
        return json.loads(self.field(job_id, "options") or "{}")

    def state(self, job_id: str) -> str | None:
        return self.field(job_id, "state")

    def queued_depth(self, queue: str) -> int:
        return self.r.scard(keys.queued(queue))

    # transitions

    def transition(self, job_id: str, state: str, data: dict | None = None, only_from: tuple[str, ...] = (),
                   **fields) -> tuple[bool, str]:
        """Move the job to `state` if the state machine allows it from where it is now (and, with
        `only_from`, only from those states).

        Returns (moved, previous_or_current_state)."""
        sources = [s for s in allowed_from(state) if not only_from or s in only_from]
        argv = [state, " ".join(sources), EVENT_FOR_STATE[state], self.events.max_len, json.dumps(data or {}),
                RUNNING]
        for name, value in fields.items():
            argv += [name, value]
        script_keys = [keys.job(job_id), keys.events(), keys.running(), *(keys.queued(q) for q in QUEUES)]
        moved, seen = self._transition(keys=script_keys, args=argv)
        return bool(moved), seen

    def start(self, job_id: str) -> bool:
        """queued -> running. True also when the job was already running: a redelivered message after
        a worker died resumes it (the rebuild lock and fence keep that safe)."""
        now = time.time()
        moved, seen = self.transition(job_id, RUNNING, started_at=now, heartbeat=now, stage=names.STAGE_STARTING)
        return moved or seen == RUNNING

    def begin(self, job_id: str) -> dict | None:
        """The job's fields when a worker should run it now (it moved to running, or resumes after a
        redelivery); None when it already finished or was canceled before it started."""
        raw = self.raw(job_id)
        if raw["state"] in TERMINAL or not self.start(job_id):
            log.info("event=job.skip job=%s kind=%s state=%s", job_id, raw.get("kind"), self.state(job_id))
            return None
        return raw

    def succeed(self, job_id: str, result: dict) -> bool:
        moved, _ = self.transition(job_id, SUCCEEDED, data={"result": result}, result=json.dumps(result),
                                   finished_at=time.time(), stage=names.STAGE_DONE)
        return moved

    def fail(self, job_id: str, error: str, retryable: bool = False, result: dict | None = None) -> bool:
        """running/queued -> failed. `retryable`: the cause was transient (a full disk, say), so the same
        request made again can succeed; the job says so to its client. `result`: what the failed run found
        (a refused rebuild's per-canary report), kept as the job's result."""
        data: dict = {"error": error, "retryable": retryable}
        fields: dict = {"error": error, "finished_at": time.time(), "retryable": int(retryable)}
        if result is not None:
            data["result"] = result
            fields["result"] = json.dumps(result)
        moved, _ = self.transition(job_id, FAILED, data=data, **fields)
        return moved

    def cancel(self, job_id: str, reason: str = "canceled") -> bool:
        moved, _ = self.transition(job_id, CANCELED, data={"reason": reason}, error=reason,
                                   finished_at=time.time(), stage=names.STAGE_CANCELED)
        return moved

    def request_cancel(self, job_id: str, reason: str = "canceled by request") -> str:
        """Cancel a queued job now, or flag a running one to stop at its next step.

        Returns the state after the request: canceled, running (flagged) or the terminal state."""
        # Only from queued: `cancel()` would also move a running job, leaving its worker still writing
        # (an ingest would register its segment after the job was reported canceled).
        moved, state = self.transition(job_id, CANCELED, data={"reason": reason}, only_from=(QUEUED,),
                                       error=reason, finished_at=time.time(), stage=names.STAGE_CANCELED)
        if moved:
            return CANCELED
        if not state:
            raise JobNotFound(job_id)
        if state == RUNNING:
            self.r.hset(keys.job(job_id), "cancel_requested", 1)
        return state

    def cancel_requested(self, job_id: str) -> bool:
        return self.field(job_id, "cancel_requested") == "1"

    # progress and bookkeeping

    def progress(self, job_id: str, stage: str, done: int, total: int, rate: float | None = None) -> None:
        """Record progress and heartbeat, and append `job.progress` to the event stream."""
        now = time.time()
        data: dict[str, str | int | float] = {"stage": stage, "done": done, "total": total}
        if rate is not None:
            data["rate"] = round(rate, 2)
        collection, kind = self.r.hmget(keys.job(job_id), "collection", "kind")
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(keys.job(job_id), mapping={"stage": stage, "done": done, "total": total, "heartbeat": now,
                                             "rate": data.get("rate", 0)})
        self.events.append_in(pipe, names.JOB_PROGRESS, job_id=job_id, collection=collection or "", kind=kind or "",
                              state=RUNNING, data=data)
        pipe.execute()

    def set_fields(self, job_id: str, **fields) -> None:
        """Bookkeeping fields that are not state (e.g. the segment an ingest registered)."""
        self.r.hset(keys.job(job_id), mapping=cast(dict[FieldT, EncodableT], fields))

    def touch(self, job_id: str) -> None:
        """Refresh the heartbeat without progress (a job waiting for a lock, or inside a long step, is
        still alive). A job that is gone stays gone: no hash is created for it."""
        if self.r.exists(keys.job(job_id)):
            self.r.hset(keys.job(job_id), "heartbeat", time.time())

    def mark_requeued(self, job_id: str) -> None:
        """The recovery check sent the job's task again: when (so the next check waits a lease before
        sending it again) and one more requeue counted. The heartbeat stays as it was: it tells the
        delivery whether the run it replaces is still alive."""
        now = time.time()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(keys.job(job_id), mapping={"requeued_at": now})
        pipe.hincrby(keys.job(job_id), "requeues", 1)
        pipe.execute()

    # attempts: each time a worker starts work on a job it counts an execution, and each execution that
    # ends (whatever its outcome: done, failed, handed back for a retry) counts an end. An execution
    # that never ended was lost with its worker (killed, crashed, out of memory).

    def begin_attempt(self, job_id: str, runner: str, ended_meanwhile: int = 0) -> tuple[int, int]:
        """Count an execution of the job by `runner` (and `ended_meanwhile` ends its caller could not
        record); returns (executions so far, executions lost before this one); (0, 0) for a job that is
        gone."""
        if not self.r.exists(keys.job(job_id)):
            return 0, 0
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(keys.job(job_id), "runner", runner)
        pipe.hincrby(keys.job(job_id), "executions", 1)
        if ended_meanwhile:
            pipe.hincrby(keys.job(job_id), "ended", ended_meanwhile)
        pipe.hget(keys.job(job_id), "ended")
        _, executions, *_, ended = pipe.execute()
        return int(executions), max(0, int(executions) - 1 - int(ended or 0))

    def end_attempt(self, job_id: str, runner: str) -> None:
        """Count the end of `runner`'s execution and forget it as the job's runner (if it still is)."""
        key = keys.job(job_id)
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                if not pipe.exists(key):
                    return
                mine = pipe.hget(key, "runner") == runner
                pipe.multi()
                pipe.hincrby(key, "ended", 1)
                if mine:
                    pipe.hdel(key, "runner")
                pipe.execute()
            except redis.WatchError:  # the job changed meanwhile (another run began): count the end only
                self.r.hincrby(key, "ended", 1)

    def run_info(self, job_id: str) -> tuple[str | None, float, str | None]:
        """(state, heartbeat, runner) of the job."""
        state, heartbeat, runner = cast(list[str | None],
                                        self.r.hmget(keys.job(job_id), "state", "heartbeat", "runner"))
        return state, float(heartbeat or 0), runner

    def running_ids(self) -> set[str]:
        return cast(set[str], self.r.smembers(keys.running()))

    def queued_ids(self, queue: str) -> set[str]:
        return cast(set[str], self.r.smembers(keys.queued(queue)))

    def forget_running(self, job_id: str) -> None:
        """Drop an id from the running set once its job is no longer running (the publish script
        finishes rebuilds without touching the set)."""
        self.r.srem(keys.running(), job_id)

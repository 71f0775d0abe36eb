"""Job state: one owner for every job hash and every transition.

States: queued -> running -> succeeded | failed | canceled, and queued -> canceled. Each transition is
one Lua script that checks the current state, sets the new one and appends the event, so it happens
once whatever races. (The rebuild's final running -> succeeded happens inside the publish script in
`shared.pointers`, with the same rule, so that pointer and job change together.)
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import redis

from shared import keys
from shared.redisconn import load_script
from shared.tasknames import KINDS, QUEUES

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})
TRANSITIONS = {
    QUEUED: frozenset({RUNNING, CANCELED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELED}),
}
EVENT_FOR_STATE = {
    QUEUED: "job.queued",
    RUNNING: "job.started",
    SUCCEEDED: "job.succeeded",
    FAILED: "job.failed",
    CANCELED: "job.canceled",
}
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"


class JobNotFound(LookupError):
    pass


def new_job_id() -> str:
    return uuid.uuid4().hex


def allowed_from(state: str) -> list[str]:
    return [src for src, targets in TRANSITIONS.items() if state in targets]


def iso_time(ts: str | None) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(float(ts), UTC).isoformat().replace("+00:00", "Z")


class JobStore:
    """Reads and changes job hashes. Every write to a job's state goes through this class."""

    def __init__(self, client: redis.Redis, events_max_len: int = 100_000):
        self.r = client
        self.events_max_len = events_max_len
        self._transition = load_script(client, "transition")

    # creation and reads

    def create(self, kind: str, collection: str, options: dict | None = None, job_id: str | None = None) -> dict:
        """Create a job in state queued and record `job.queued`. The caller enqueues it afterwards."""
        job_id = job_id or new_job_id()
        _, queue = KINDS[kind]
        now = time.time()
        fields = {
            "id": job_id, "kind": kind, "collection": collection, "queue": queue, "state": QUEUED,
            "stage": "queued", "done": 0, "total": 0, "created_at": now, "heartbeat": now,
            "options": json.dumps(options or {}),
        }
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(keys.job(job_id), mapping=fields)
        pipe.zadd(keys.jobs(), {job_id: now})
        pipe.zadd(keys.collection_jobs(collection), {job_id: now})
        pipe.sadd(keys.queued(queue), job_id)
        pipe.xadd(keys.events(), {"type": EVENT_FOR_STATE[QUEUED], "job_id": job_id, "collection": collection,
                                  "kind": kind, "state": QUEUED, "data": "{}"},
                  maxlen=self.events_max_len, approximate=True)
        pipe.execute()
        return self.get(job_id)

    def raw(self, job_id: str) -> dict:
        data = self.r.hgetall(keys.job(job_id))
        if not data:
            raise JobNotFound(job_id)
        return data

    def get(self, job_id: str) -> dict:
        """The job as the API shows it."""
        return self.public(self.raw(job_id))

    @staticmethod
    def public(data: dict) -> dict:
        return {
            "id": data["id"],
            "kind": data["kind"],
            "collection": data["collection"],
            "state": data["state"],
            "progress": {"stage": data.get("stage", ""), "done": int(float(data.get("done") or 0)),
                         "total": int(float(data.get("total") or 0))},
            "error": data.get("error") or None,
            "created_at": iso_time(data.get("created_at")),
            "started_at": iso_time(data.get("started_at")),
            "finished_at": iso_time(data.get("finished_at")),
            "result": json.loads(data["result"]) if data.get("result") else None,
        }

    def options(self, job_id: str) -> dict:
        return json.loads(self.r.hget(keys.job(job_id), "options") or "{}")

    def state(self, job_id: str) -> str | None:
        return self.r.hget(keys.job(job_id), "state")

    def queued_depth(self, queue: str) -> int:
        return self.r.scard(keys.queued(queue))

    # transitions

    def transition(self, job_id: str, state: str, data: dict | None = None, **fields) -> tuple[bool, str]:
        """Move the job to `state` if the state machine allows it from where it is now.

        Returns (moved, previous_or_current_state)."""
        argv = [state, " ".join(allowed_from(state)), EVENT_FOR_STATE[state], self.events_max_len,
                json.dumps(data or {})]
        for name, value in fields.items():
            argv += [name, value]
        moved, seen = self._transition(
            keys=[keys.job(job_id), keys.events(), *(keys.queued(q) for q in QUEUES)], args=argv)
        return bool(moved), seen

    def start(self, job_id: str) -> bool:
        """queued -> running. True also when the job was already running: a redelivered message after
        a worker died resumes it (the rebuild lock and fence keep that safe)."""
        now = time.time()
        moved, seen = self.transition(job_id, RUNNING, started_at=now, heartbeat=now, stage="starting")
        return moved or seen == RUNNING

    def succeed(self, job_id: str, result: dict) -> bool:
        moved, _ = self.transition(job_id, SUCCEEDED, data={"result": result}, result=json.dumps(result),
                                   finished_at=time.time(), stage="done")
        return moved

    def fail(self, job_id: str, error: str) -> bool:
        moved, _ = self.transition(job_id, FAILED, data={"error": error}, error=error,
                                   finished_at=time.time())
        return moved

    def cancel(self, job_id: str, reason: str = "canceled") -> bool:
        moved, _ = self.transition(job_id, CANCELED, data={"reason": reason}, error=reason,
                                   finished_at=time.time(), stage="canceled")
        return moved

    def request_cancel(self, job_id: str) -> str:
        """Cancel a queued job now, or flag a running one to stop at its next step.

        Returns the state after the request: canceled, running (flagged) or the terminal state."""
        # Only from queued: `cancel()` would also move a running job, leaving its worker still writing
        # (an ingest would register its segment after the job was reported canceled).
        reason = "canceled by request"
        argv = [CANCELED, QUEUED, EVENT_FOR_STATE[CANCELED], self.events_max_len, json.dumps({"reason": reason}),
                "error", reason, "finished_at", time.time(), "stage", "canceled"]
        moved, state = self._transition(
            keys=[keys.job(job_id), keys.events(), *(keys.queued(q) for q in QUEUES)], args=argv)
        if moved:
            return CANCELED
        if not state:
            raise JobNotFound(job_id)
        if state == RUNNING:
            self.r.hset(keys.job(job_id), "cancel_requested", 1)
        return state

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(keys.job(job_id), "cancel_requested") == "1"

    # progress

    def progress(self, job_id: str, stage: str, done: int, total: int, rate: float | None = None) -> None:
        """Record progress and heartbeat, and append `job.progress` to the event stream."""
        now = time.time()
        data = {"stage": stage, "done": done, "total": total}
        if rate is not None:
            data["rate"] = round(rate, 2)
        collection, kind = self.r.hmget(keys.job(job_id), "collection", "kind")
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(keys.job(job_id), mapping={"stage": stage, "done": done, "total": total, "heartbeat": now,
                                             "rate": data.get("rate", 0)})
        pipe.xadd(keys.events(), {"type": "job.progress", "job_id": job_id, "collection": collection or "",
                                  "kind": kind or "", "state": RUNNING, "data": json.dumps(data)},
                  maxlen=self.events_max_len, approximate=True)
        pipe.execute()

    def set_fields(self, job_id: str, **fields) -> None:
        """Bookkeeping fields that are not state (e.g. the segment an ingest registered)."""
        self.r.hset(keys.job(job_id), mapping=fields)


class ProgressReporter:
    """Throttles progress writes: at most every `every` items or every `interval` seconds."""

    def __init__(self, jobs: JobStore, job_id: str, stage: str, total: int, every: int, interval: float = 1.0):
        self.jobs, self.job_id, self.stage, self.total = jobs, job_id, stage, total
        self.every, self.interval = max(1, every), interval
        self.started = time.monotonic()
        self._last_done, self._last_time = -1, 0.0
        self.update(0, force=True)

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and done - self._last_done < self.every and now - self._last_time < self.interval:
            return
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 and done else None
        self.jobs.progress(self.job_id, self.stage, done, self.total, rate)
        self._last_done, self._last_time = done, now

    def finish(self) -> float:
        self.update(self.total, force=True)
        return time.monotonic() - self.started

"""Job state: one owner for every job hash and every transition.

States: queued -> running -> succeeded | failed | canceled, and queued -> canceled. Each transition is
one Lua script that checks the current state, sets the new one and appends the event, so it happens
once whatever races. (The rebuild's final running -> succeeded happens inside the publish script in
`shared.pointers`, with the same rule, so that pointer and job change together.)
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime

import redis

from shared import keys
from shared.redisconn import load_script
from shared.tasknames import KINDS, QUEUES

log = logging.getLogger(__name__)

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
JOB_ID_PATTERN = r"^[0-9a-f]{32}\Z"


class JobNotFound(LookupError):
    pass


class QueueFull(Exception):
    """A queue holds `bound` queued jobs already: back-pressure, nothing was created."""

    def __init__(self, queue: str, depth: int, bound: int):
        super().__init__(f"queue {queue!r} holds {depth} queued jobs (bound {bound})")
        self.queue, self.depth, self.bound = queue, depth, bound


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
        self._create = load_script(client, "create_job")

    # creation and reads

    def create(self, kind: str, collection: str, options: dict | None = None, job_id: str | None = None,
               max_queued: int = 0) -> dict:
        """Create a job in state queued and record `job.queued`. The caller enqueues it afterwards.

        With `max_queued` > 0 the job is created only while its queue holds fewer queued jobs than
        that (checked and created in one script); otherwise raises QueueFull and creates nothing."""
        job_id = job_id or new_job_id()
        _, queue = KINDS[kind]
        now = time.time()
        fields = {
            "id": job_id, "kind": kind, "collection": collection, "queue": queue, "state": QUEUED,
            "stage": "queued", "done": 0, "total": 0, "created_at": now, "heartbeat": now,
            "options": json.dumps(options or {}),
        }
        argv: list = [max(0, int(max_queued)), job_id, now, self.events_max_len, collection, kind]
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
            "cancel_requested": data.get("cancel_requested") == "1",
        }

    def options(self, job_id: str) -> dict:
        return json.loads(self.r.hget(keys.job(job_id), "options") or "{}")

    def state(self, job_id: str) -> str | None:
        return self.r.hget(keys.job(job_id), "state")

    def queued_depth(self, queue: str) -> int:
        return self.r.scard(keys.queued(queue))

    # transitions

    def transition(self, job_id: str, state: str, data: dict | None = None, only_from: tuple[str, ...] = (),
                   **fields) -> tuple[bool, str]:
        """Move the job to `state` if the state machine allows it from where it is now (and, with
        `only_from`, only from those states).

        Returns (moved, previous_or_current_state)."""
        sources = [s for s in allowed_from(state) if not only_from or s in only_from]
        argv = [state, " ".join(sources), EVENT_FOR_STATE[state], self.events_max_len, json.dumps(data or {})]
        for name, value in fields.items():
            argv += [name, value]
        script_keys = [keys.job(job_id), keys.events(), keys.running(), *(keys.queued(q) for q in QUEUES)]
        moved, seen = self._transition(keys=script_keys, args=argv)
        return bool(moved), seen

    def start(self, job_id: str) -> bool:
        """queued -> running. True also when the job was already running: a redelivered message after
        a worker died resumes it (the rebuild lock and fence keep that safe)."""
        now = time.time()
        moved, seen = self.transition(job_id, RUNNING, started_at=now, heartbeat=now, stage="starting")
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

    def request_cancel(self, job_id: str, reason: str = "canceled by request") -> str:
        """Cancel a queued job now, or flag a running one to stop at its next step.

        Returns the state after the request: canceled, running (flagged) or the terminal state."""
        # Only from queued: `cancel()` would also move a running job, leaving its worker still writing
        # (an ingest would register its segment after the job was reported canceled).
        moved, state = self.transition(job_id, CANCELED, data={"reason": reason}, only_from=(QUEUED,),
                                       error=reason, finished_at=time.time(), stage="canceled")
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

    def touch(self, job_id: str) -> None:
        """Refresh the heartbeat without progress (a job waiting for a lock is still alive)."""
        self.r.hset(keys.job(job_id), "heartbeat", time.time())

    # listing and history

    def list(self, collection: str | None = None, state: str | None = None, kind: str | None = None,
             limit: int = 20, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """Jobs newest first, optionally filtered; returns (page, next cursor or None).

        The cursor names the last job looked at (its created_at and id), so pages neither skip nor
        repeat jobs when new ones arrive. A page may hold fewer than `limit` jobs when filters leave
        few matches among the next LIST_SCAN_MAX jobs; the cursor then continues from there."""
        index = keys.collection_jobs(collection) if collection else keys.jobs()
        after = decode_cursor(cursor) if cursor else None
        page: list[dict] = []
        scanned = 0
        last: tuple[float, str] | None = None
        max_score: float | str = after[0] if after else "+inf"
        exhausted = False
        while len(page) < limit and scanned < LIST_SCAN_MAX:
            batch = self.r.zrevrangebyscore(index, max_score, "-inf", start=0, num=LIST_BATCH,
                                            withscores=True)
            if after:
                # Same created_at as the cursor: the ones at or above its id were on earlier pages
                # (members of equal score come in reverse id order).
                batch = [(m, sc) for m, sc in batch if not (sc == after[0] and m >= after[1])]
            if not batch:
                exhausted = True
                break
            pipe = self.r.pipeline(transaction=False)
            for member, _ in batch:
                pipe.hgetall(keys.job(member))
            for (member, score), data in zip(batch, pipe.execute(), strict=True):
                scanned += 1
                last = (score, member)
                if data and (state is None or data.get("state") == state) \
                        and (kind is None or data.get("kind") == kind):
                    page.append(self.public(data))
                    if len(page) == limit:
                        break
            max_score, after = last[0], last
        if exhausted or last is None:
            return page, None
        # Only look one job further when the page ended exactly at the end of the index.
        rest = self.r.zrevrangebyscore(index, last[0], "-inf", start=0, num=LIST_BATCH, withscores=True)
        if not any(not (sc == last[0] and m >= last[1]) for m, sc in rest):
            return page, None
        return page, encode_cursor(*last)

    def cleanup(self, ttl_seconds: float, keep_per_collection: int, now: float | None = None) -> int:
        """Delete finished jobs older than `ttl_seconds`, except the newest `keep_per_collection` of
        each collection. Queued and running jobs are never deleted. Returns how many were deleted."""
        cutoff = (now if now is not None else time.time()) - ttl_seconds
        deleted = 0
        start = 0
        while True:
            # Oldest first; created before the cutoff is necessary (finished is never before created).
            ids = self.r.zrangebyscore(keys.jobs(), "-inf", cutoff, start=start, num=CLEANUP_BATCH)
            if not ids:
                return deleted
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(keys.job(job_id), "state", "collection", "finished_at", "created_at")
            doomed = []
            for job_id, (state, collection, finished_at, created_at) in zip(ids, pipe.execute(), strict=True):
                if state is None:
                    doomed.append((job_id, collection))  # the hash is gone: drop the index entry
                    continue
                if state not in TERMINAL or float(finished_at or created_at or 0) > cutoff:
                    continue
                rank = self.r.zrevrank(keys.collection_jobs(collection), job_id)
                if rank is not None and rank < keep_per_collection:
                    continue
                doomed.append((job_id, collection))
            if doomed:
                pipe = self.r.pipeline(transaction=True)
                for job_id, collection in doomed:
                    pipe.delete(keys.job(job_id))
                    pipe.zrem(keys.jobs(), job_id)
                    if collection:
                        pipe.zrem(keys.collection_jobs(collection), job_id)
                pipe.execute()
                deleted += len(doomed)
            # Deleted entries left the index, so the next batch starts after the kept ones only.
            start += len(ids) - len(doomed)

    def running_ids(self) -> set[str]:
        return self.r.smembers(keys.running())

    def queued_ids(self, queue: str) -> set[str]:
        return self.r.smembers(keys.queued(queue))

    def forget_running(self, job_id: str) -> None:
        """Drop an id from the running set once its job is no longer running (the publish script
        finishes rebuilds without touching the set)."""
        self.r.srem(keys.running(), job_id)


LIST_BATCH = 100
LIST_SCAN_MAX = 1000
CLEANUP_BATCH = 500


def encode_cursor(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}|{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(created_at, job id) from a cursor; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, _, job_id = raw.partition("|")
        value = float(score)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a valid cursor") from exc
    if not re.match(JOB_ID_PATTERN, job_id) or value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a valid cursor")
    return value, job_id


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

"""The barrier of a job that fanned out child jobs (a reconcile and its ingest batches).

The parent records its children and returns; it never waits in a worker slot (workers may run one
task at a time, and a parent waiting for children queued behind it would wait forever). Each child,
when it ends whatever the outcome, counts itself once with one Lua script; the child that brings the
count to zero finishes the parent. Sums of the children's counts live in the barrier, so the parent's
progress is theirs."""

from __future__ import annotations

import time
from typing import cast

import redis

from shared import keys
from shared.store.conn import load_script

COUNTERS = ("total", "remaining", "files_total", "files_done", "chunks_embedded", "chunks_reused",
            "children_failed")


class FanOut:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._child_done = load_script(client, "fanout_child_done")

    def open(self, parent_id: str, children: dict[str, int]) -> None:
        """Record the barrier: `children` maps each child job id to the files it ingests. Done before
        any child is enqueued, so no child can finish before its barrier exists."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(keys.fanout(parent_id), keys.fanout_pending(parent_id), keys.fanout_failed(parent_id))
        pipe.hset(keys.fanout(parent_id), mapping={
            "total": len(children), "remaining": len(children), "files_total": sum(children.values()),
            "files_done": 0, "chunks_embedded": 0, "chunks_reused": 0, "children_failed": 0,
            "started_at": time.time()})
        if children:
            pipe.sadd(keys.fanout_pending(parent_id), *children)
        pipe.hset(keys.job(parent_id), "fanout", "open")
        pipe.execute()

    def child_done(self, parent_id: str, child_id: str, files: int, embedded: int, reused: int,
                   failed: bool = False, failed_files: list[str] | None = None) -> int:
        """Count a finished child once. Returns the children still pending (0: the caller finishes
        the parent), or -1 when the child had been counted already."""
        return int(self._child_done(
            keys=[keys.fanout(parent_id), keys.fanout_pending(parent_id), keys.fanout_failed(parent_id),
                  keys.job(parent_id)],
            args=[child_id, int(files), int(embedded), int(reused), time.time(), "1" if failed else "0",
                  *(failed_files or [])]))

    def state(self, parent_id: str) -> dict | None:
        """The barrier's counters, started_at and the failed files; None when there is none."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(keys.fanout(parent_id))
        pipe.lrange(keys.fanout_failed(parent_id), 0, -1)
        raw, failed = pipe.execute()
        if not raw:
            return None
        out: dict = {name: int(raw.get(name, 0)) for name in COUNTERS}
        out["started_at"] = float(raw.get("started_at") or 0)
        out["failed_files"] = failed
        return out

    def pending(self, parent_id: str) -> set[str]:
        return cast(set[str], self.r.smembers(keys.fanout_pending(parent_id)))

    def expire(self, parent_id: str, ttl_seconds: int) -> None:
        """The parent finished: its barrier goes with the job's retention."""
        pipe = self.r.pipeline(transaction=False)
        for key in (keys.fanout(parent_id), keys.fanout_pending(parent_id), keys.fanout_failed(parent_id)):
            pipe.expire(key, max(1, int(ttl_seconds)))
        pipe.execute()

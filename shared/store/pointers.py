"""Index pointers: which version of each collection is live, published through one fenced script."""

from __future__ import annotations

import json
import time

import redis

from shared import eventnames as names
from shared import keys
from shared.jobkinds import REBUILD
from shared.jobstates import EVENT_FOR_STATE, RUNNING, SUCCEEDED
from shared.store.conn import confirm, load_script
from shared.store.locks import Lease

POINTER_INT_FIELDS = ("version", "fence", "vectors", "dim", "documents", "changes")
POINTER_FLOAT_FIELDS = ("built_at", "published_at")


class PublishRefused(RuntimeError):
    """The publish script refused: see `Pointers.publish` for the reasons."""

    # The run that tried no longer owns the job's build: another run (or nobody) does, so this one must
    # leave the job alone rather than fail it.
    SUPERSEDED = ("lease", "stale")

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _typed(raw: dict) -> dict:
    out = dict(raw)
    for name in POINTER_INT_FIELDS:
        if name in out:
            out[name] = int(out[name])
    for name in POINTER_FLOAT_FIELDS:
        if name in out:
            out[name] = float(out[name])
    return out


class Pointers:
    def __init__(self, client: redis.Redis, history_len: int, events_max_len: int):
        self.r = client
        self.history_len = history_len
        self.events_max_len = events_max_len
        self._publish = load_script(client, "publish")

    def publish(self, lease: Lease, pointer: dict, job_id: str = "", result: dict | None = None) -> None:
        """Make `pointer` live for the lease's collection if the lease is still held (same holder, same
        fence) and its fence is above the published one; with a job id, also mark that rebuild job
        succeeded with `result`. Raises PublishRefused otherwise (reason 'lease', 'stale', 'canceled' or
        'state:<s>')."""
        now = time.time()
        collection, fence = lease.collection, lease.fence
        record = {**pointer, "collection": collection, "fence": fence, "published_at": now}
        ok, reason = self._publish(
            keys=[keys.pointer(collection), keys.pointer_history(collection), keys.job(job_id or "-"),
                  keys.events(), keys.collection(collection), keys.lock(collection)],
            args=[fence, json.dumps(record), self.history_len, json.dumps(result or {}), now,
                  keys.swap_channel(), self.events_max_len, job_id, RUNNING, SUCCEEDED,
                  EVENT_FOR_STATE[SUCCEEDED], lease.token, names.INDEX_PUBLISHED, REBUILD.name, names.STAGE_DONE])
        if not int(ok):
            raise PublishRefused(reason)
        # Reported done (the task acked) only once a replica holds it: a publish lost with the primary
        # leaves its job running, and the job runs again after the failover.
        confirm(self.r)

    def subscribe(self):
        """A pub/sub connection that receives a message ({"collection", "version"}) per publish."""
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.swap_channel())
        return pubsub

    def get(self, collection: str) -> dict | None:
        raw = self.r.hgetall(keys.pointer(collection))
        return _typed(raw) if raw else None

    def get_many(self, collections: list[str]) -> dict[str, dict]:
        pipe = self.r.pipeline(transaction=False)
        for name in collections:
            pipe.hgetall(keys.pointer(name))
        return {name: _typed(raw) for name, raw in zip(collections, pipe.execute(), strict=True) if raw}

    def history(self, collection: str) -> list[dict]:
        return [_typed(json.loads(item)) for item in self.r.lrange(keys.pointer_history(collection), 0, -1)]

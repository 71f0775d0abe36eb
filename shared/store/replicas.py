"""Which index version each live API process serves: heartbeats its watcher writes, read by status
pages and by version collection (a version some process serves is never deleted)."""

from __future__ import annotations

import json
import time
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

from shared import keys

SEEN_FIELD = "_seen"
# JSON {collection: {version, error, attempts, since}} of the versions the process failed to load.
FAILED_FIELD = "_failed"


class ReplicaStore:
    def __init__(self, client: redis.Redis, ttl_seconds: float):
        self.r = client
        self.ttl = ttl_seconds

    def heartbeat(self, replica_id: str, served: dict[str, int], failed: dict[str, dict] | None = None) -> None:
        """Record what `replica_id` serves now (and the versions it failed to load); the entry expires
        unless refreshed within the TTL."""
        now = time.time()
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(keys.replica(replica_id))
        pipe.hset(keys.replica(replica_id), mapping={SEEN_FIELD: now, FAILED_FIELD: json.dumps(failed or {}),
                                                     # redis-py's mapping type has invariant keys
                                                     **cast(dict[FieldT, EncodableT], served)})
        pipe.expire(keys.replica(replica_id), int(self.ttl))
        pipe.zadd(keys.replicas(), {replica_id: now})
        pipe.zremrangebyscore(keys.replicas(), 0, now - self.ttl)
        pipe.execute()

    def unregister(self, replica_id: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(keys.replica(replica_id))
        pipe.zrem(keys.replicas(), replica_id)
        pipe.execute()

    def versions(self) -> dict[str, dict[str, int]]:
        """replica id -> {collection: version served}, for API processes whose heartbeat is fresh."""
        ids = cast(list[str], self.r.zrangebyscore(keys.replicas(), time.time() - self.ttl, "+inf"))
        if not ids:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for replica_id in ids:
            pipe.hgetall(keys.replica(replica_id))
        out = {}
        for replica_id, served in zip(ids, pipe.execute(), strict=True):
            if served:
                out[replica_id] = {name: int(v) for name, v in served.items() if name not in (SEEN_FIELD, FAILED_FIELD)}
        return out

    def failures(self) -> dict[str, dict[str, dict]]:
        """replica id -> {collection: {version, error, attempts, since}} of the versions live API
        processes could not load."""
        ids = cast(list[str], self.r.zrangebyscore(keys.replicas(), time.time() - self.ttl, "+inf"))
        if not ids:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for replica_id in ids:
            pipe.hget(keys.replica(replica_id), FAILED_FIELD)
        out = {}
        for replica_id, raw in zip(ids, pipe.execute(), strict=True):
            try:
                failed = json.loads(raw) if raw else {}
            except ValueError:
                failed = {}
            if failed:
                out[replica_id] = failed
        return out

"""Which index version each live API process serves: heartbeats its watcher writes, read by status
pages, and reader leases, read by version collection (a version some process holds a lease on is never
deleted).

Heartbeats expire after `replica_ttl_seconds` (30 s): status says which processes are live. A reader
lease lasts `reader_lease_seconds` (15 min), renewed by the same heartbeat and released when the process
swaps away or stops, so a process that is paused, swapping to disk or cut off from Redis for minutes on
a shared volume still finds its files when it resumes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

from shared import keys

SEEN_FIELD = "_seen"
# JSON {collection: {version, error, attempts, since}} of the versions the process failed to load.
FAILED_FIELD = "_failed"


def _lease_member(version: int, replica_id: str) -> str:
    return f"{version}|{replica_id}"


def pinned_holder(replica_id: str) -> str:
    """The holder of a process's leases on versions it keeps open for pinned reads: apart from the
    leases on what it serves, so releasing a swapped-away version never drops a pinned reader's."""
    return f"{replica_id}+pinned"


class ReplicaStore:
    def __init__(self, client: redis.Redis, ttl_seconds: float, lease_seconds: float = 900.0):
        self.r = client
        self.ttl = ttl_seconds
        self.lease = lease_seconds

    def heartbeat(self, replica_id: str, served: dict[str, int], failed: dict[str, dict] | None = None,
                  pinned: Iterable[tuple[str, int]] = ()) -> None:
        """Record what `replica_id` serves now (and the versions it failed to load), and renew its reader
        leases on those versions and on the `pinned` ones it holds open for reads that ask for them (not
        reported as served); the entry expires unless refreshed within the TTL."""
        now = time.time()
        pipe = self.r.pipeline(transaction=True)
        for name, version in served.items():
            pipe.zadd(keys.readers(name), {_lease_member(version, replica_id): now + self.lease})
        for name, version in pinned:
            pipe.zadd(keys.readers(name), {_lease_member(version, pinned_holder(replica_id)): now + self.lease})
        pipe.delete(keys.replica(replica_id))
        pipe.hset(keys.replica(replica_id), mapping={SEEN_FIELD: now, FAILED_FIELD: json.dumps(failed or {}),
                                                     # redis-py's mapping type has invariant keys
                                                     **cast(dict[FieldT, EncodableT], served)})
        pipe.expire(keys.replica(replica_id), int(self.ttl))
        pipe.zadd(keys.replicas(), {replica_id: now})
        pipe.zremrangebyscore(keys.replicas(), 0, now - self.ttl)
        pipe.execute()

    def unregister(self, replica_id: str, served: dict[str, int] | None = None,
                   pinned: Iterable[tuple[str, int]] = ()) -> None:
        """Forget a process that stops, with its leases on the versions it `served` and held `pinned`."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(keys.replica(replica_id))
        pipe.zrem(keys.replicas(), replica_id)
        for name, version in (served or {}).items():
            pipe.zrem(keys.readers(name), _lease_member(version, replica_id))
        for name, version in pinned:
            pipe.zrem(keys.readers(name), _lease_member(version, pinned_holder(replica_id)))
        pipe.execute()

    def hold(self, replica_id: str, name: str, version: int) -> None:
        """Take a pinned reader's lease on `version` of `name` before reading its files (the heartbeat
        renews it while the process reports it `pinned`)."""
        self.r.zadd(keys.readers(name), {_lease_member(version, pinned_holder(replica_id)): time.time() + self.lease})

    def release(self, replica_id: str, name: str, version: int, pinned: bool = False) -> None:
        """The process no longer serves `version` of `name` (it swapped away), or no longer holds it open
        for pinned reads (`pinned`): drop that lease."""
        holder = pinned_holder(replica_id) if pinned else replica_id
        self.r.zrem(keys.readers(name), _lease_member(version, holder))

    def leased(self, name: str) -> set[int]:
        """Versions of `name` some API process holds an unexpired reader lease on (expired ones are
        removed on the way)."""
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        pipe.zremrangebyscore(keys.readers(name), 0, now)
        pipe.zrangebyscore(keys.readers(name), now, "+inf")
        members = cast(list[str], pipe.execute()[1])
        return {int(member.partition("|")[0]) for member in members}

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

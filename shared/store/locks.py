"""The per-collection rebuild lease lock with fencing numbers, and plain locks for housekeeping.

A rebuild holds the lease while it builds and renews it between steps. Each acquisition hands out a
higher fence; the publish script refuses a fence not above the published one, so a worker that lost
its lease (paused, partitioned, killed and redelivered) can never publish over a newer index.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis

from shared import keys
from shared.store.conn import delete_if_equals, load_script


class LeaseLost(RuntimeError):
    """The lease expired or was taken over; the holder must stop without publishing."""


@dataclass(frozen=True)
class Lease:
    collection: str
    job_id: str
    fence: int

    @property
    def token(self) -> str:
        return f"{self.job_id}|{self.fence}"


class RebuildLocks:
    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.r = client
        self.ttl_ms = int(ttl_seconds * 1000)
        self._acquire = load_script(client, "lock_acquire")
        self._renew = load_script(client, "lock_renew")
        self._release = load_script(client, "lock_release")
        self._claim = load_script(client, "claim_rebuild")

    def acquire(self, collection: str, job_id: str) -> Lease | None:
        """The lease with a new fence, or None while another job holds it."""
        fence, _holder = self._acquire(keys=[keys.lock(collection), keys.fence(collection)],
                                       args=[job_id, self.ttl_ms])
        return Lease(collection, job_id, int(fence)) if int(fence) else None

    def renew(self, lease: Lease) -> None:
        if not self._renew(keys=[keys.lock(lease.collection)], args=[lease.token, self.ttl_ms]):
            raise LeaseLost(f"collection={lease.collection} job={lease.job_id} fence={lease.fence}")

    def release(self, lease: Lease) -> bool:
        return bool(self._release(keys=[keys.lock(lease.collection)], args=[lease.token]))

    def holder(self, collection: str) -> dict | None:
        """Who holds the lease and for how much longer, for status pages."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(keys.lock(collection))
        pipe.pttl(keys.lock(collection))
        value, ttl = pipe.execute()
        if not value:
            return None
        job_id, _, fence = value.partition("|")
        return {"job_id": job_id, "fence": int(fence), "expires_in_ms": max(0, int(ttl))}

    def claim_rebuild(self, collection: str, job_id: str, exclusive: bool) -> tuple[bool, str]:
        """Claim the collection's one pending rebuild slot for `job_id`.

        Returns (claimed, job_id): claimed False names the rebuild already queued (or, when exclusive,
        running) that the caller should point to instead."""
        claimed, other = self._claim(keys=[keys.rebuild_pending(collection), keys.lock(collection)],
                                     args=[job_id, "exclusive" if exclusive else "coalesce"])
        return bool(claimed), other

    def pending(self, collection: str) -> str | None:
        return self.r.get(keys.rebuild_pending(collection))

    def clear_pending(self, collection: str, job_id: str) -> None:
        """Free the pending slot if `job_id` holds it (called when that rebuild starts or ends)."""
        delete_if_equals(self.r, keys.rebuild_pending(collection), job_id)


class TokenLock:
    """A lock held for at most `ttl` seconds by whoever set its random token; for housekeeping that
    must not run twice at once (a sweep started by two beats)."""

    def __init__(self, client: redis.Redis, key: str):
        self.r = client
        self.key = key

    def acquire(self, ttl_seconds: int) -> str | None:
        """The token when taken, None while someone else holds it."""
        token = uuid.uuid4().hex
        return token if self.r.set(self.key, token, nx=True, ex=max(1, int(ttl_seconds))) else None

    def release(self, token: str) -> bool:
        return delete_if_equals(self.r, self.key, token)

"""The per-collection rebuild lease lock with fencing numbers, and plain locks for housekeeping.

A rebuild holds the lease while it builds: it renews it between steps, and the worker's keepalive
thread renews every lease the process holds in the background (`renew_held`), so a long single step
(training an IVF index, writing a large version) never outlives its lease while the worker is alive.
Each acquisition hands out a higher fence; the publish script refuses a publisher that no longer holds
the lease with its fence, and a fence not above the published one, so a worker that lost its lease
(paused, partitioned, killed and redelivered) can never publish.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import cast

import redis

from shared import keys
from shared.store.conn import confirm, delete_if_equals, load_script

log = logging.getLogger(__name__)

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
        # The leases this process holds now, renewed by `renew_held` (the worker's keepalive thread).
        self._held: dict[str, Lease] = {}
        self._held_lock = threading.Lock()

    def acquire(self, collection: str, job_id: str) -> Lease | None:
        """The lease with a new fence, or None while another job holds it."""
        fence, _holder = self._acquire(keys=[keys.lock(collection), keys.fence(collection)],
                                       args=[job_id, self.ttl_ms])
        if not int(fence):
            return None
        # A fence is put to use only once a replica holds it, so a promoted replica never hands it out
        # again (NotReplicated otherwise: the run tries again, with a new fence).
        confirm(self.r)
        lease = Lease(collection, job_id, int(fence))
        with self._held_lock:
            self._held[lease.token] = lease
        return lease

    def renew(self, lease: Lease) -> None:
        if not self._renew(keys=[keys.lock(lease.collection)], args=[lease.token, self.ttl_ms]):
            self._forget(lease)
            raise LeaseLost(f"collection={lease.collection} job={lease.job_id} fence={lease.fence}")

    def release(self, lease: Lease) -> bool:
        self._forget(lease)
        return bool(self._release(keys=[keys.lock(lease.collection)], args=[lease.token]))

    def _forget(self, lease: Lease) -> None:
        with self._held_lock:
            self._held.pop(lease.token, None)

    def held(self) -> list[Lease]:
        with self._held_lock:
            return list(self._held.values())

    def renew_held(self) -> list[Lease]:
        """Renew every lease this process holds; returns those that were lost (expired or taken over),
        which are no longer renewed. The holder notices at its next step (its own renew raises)."""
        lost = []
        for lease in self.held():
            try:
                self.renew(lease)
            except LeaseLost:
                lost.append(lease)
                log.warning("event=lease.lost collection=%s job=%s fence=%s", lease.collection, lease.job_id,
                            lease.fence)
        return lost

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
        return cast(str | None, self.r.get(keys.rebuild_pending(collection)))

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

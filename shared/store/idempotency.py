"""Idempotency-Key records: a pending claim while the first request runs, then its stored answer.
The HTTP side (`webapp.api.idempotency`) decides what to claim and what to replay."""

from __future__ import annotations

import json
import time
import uuid

import redis

from shared import keys
from shared.store.conn import load_script


class IdempotencyStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int, pending_ttl_seconds: int):
        self.r = client
        self.ttl = int(ttl_seconds)
        self.pending_ttl = int(pending_ttl_seconds)
        self._settle = load_script(client, "idempotency_settle")

    def claim(self, route: str, key: str, fingerprint: str, attempts: int = 3) -> tuple[str | None, dict | None]:
        """Claim `key` on `route` for a request with `fingerprint`.

        Returns (token, None) when this request won the claim and should run, (None, record) when an
        earlier request holds the key (pending or done), and (None, None) when the key kept changing
        hands (treat it as in progress)."""
        redis_key = keys.idempotency(route, key)
        token = uuid.uuid4().hex
        pending = json.dumps({"state": "pending", "fingerprint": fingerprint, "token": token, "since": time.time()})
        for _ in range(attempts):
            if self.r.set(redis_key, pending, nx=True, ex=self.pending_ttl):
                return token, None
            raw = self.r.get(redis_key)
            if raw is not None:
                return None, json.loads(raw)
            # released or expired between the two calls: claim again
        return None, None

    def release(self, route: str, key: str, token: str) -> None:
        """Delete the pending claim if it is still ours (the request was refused: retry is allowed)."""
        self._settle(keys=[keys.idempotency(route, key)], args=[token, "", 0])

    def finish(self, route: str, key: str, token: str, record: dict) -> None:
        """Replace our pending claim by the stored response."""
        self._settle(keys=[keys.idempotency(route, key)], args=[token, json.dumps(record), self.ttl])

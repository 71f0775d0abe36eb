"""Webhooks: subscriptions, the dispatcher's place in the event stream, and each delivery's log."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import cast

import redis

from shared import keys

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
DELIVERY_STATES = (PENDING, DELIVERED, FAILED)


def _webhook(raw: dict) -> dict:
    return {"id": raw["id"], "url": raw["url"], "events": json.loads(raw["events"]),
            "collection": raw.get("collection") or None, "created_at": float(raw["created_at"])}


def _delivery(raw: dict) -> dict:
    return {"id": raw["id"], "webhook_id": raw["webhook_id"], "event": json.loads(raw["event"]),
            "state": raw["state"], "attempts": int(raw.get("attempts") or 0),
            "created_at": float(raw["created_at"]),
            "last_attempt_at": float(raw["last_attempt_at"]) if raw.get("last_attempt_at") else None,
            "next_attempt_at": float(raw["next_attempt_at"]) if raw.get("next_attempt_at") else None,
            "status_code": int(raw["status_code"]) if raw.get("status_code") else None,
            "error": raw.get("error") or None, "history": json.loads(raw.get("history") or "[]")}


class WebhookStore:
    def __init__(self, client: redis.Redis, deliveries_keep: int, delivery_ttl_seconds: int):
        self.r = client
        self.deliveries_keep = deliveries_keep
        self.delivery_ttl = delivery_ttl_seconds

    # subscriptions

    def create(self, url: str, events: list[str], collection: str | None) -> tuple[dict, str]:
        """A new webhook; returns it and its signing secret (kept here for signing, shown only now)."""
        webhook_id = uuid.uuid4().hex
        secret = secrets.token_hex(32)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(keys.webhook(webhook_id), mapping={
            "id": webhook_id, "url": url, "events": json.dumps(sorted(set(events))), "collection": collection or "",
            "secret": secret, "created_at": time.time()})
        pipe.sadd(keys.webhooks(), webhook_id)
        pipe.execute()
        webhook = self.get(webhook_id)
        assert webhook is not None  # just written under a fresh id no one else knows yet
        return webhook, secret

    def get(self, webhook_id: str) -> dict | None:
        raw = self.r.hgetall(keys.webhook(webhook_id))
        return _webhook(raw) if raw else None

    def secret(self, webhook_id: str) -> str | None:
        return cast(str | None, self.r.hget(keys.webhook(webhook_id), "secret"))

    def all(self) -> list[dict]:
        ids = sorted(cast(set[str], self.r.smembers(keys.webhooks())))
        pipe = self.r.pipeline(transaction=False)
        for webhook_id in ids:
            pipe.hgetall(keys.webhook(webhook_id))
        found = [_webhook(raw) for raw in pipe.execute() if raw]
        return sorted(found, key=lambda w: (w["created_at"], w["id"]))

    def delete(self, webhook_id: str) -> bool:
        """Remove the webhook and its delivery log; deliveries in flight find it gone and stop."""
        ids = cast(list[str], self.r.lrange(keys.webhook_deliveries(webhook_id), 0, -1))
        pipe = self.r.pipeline(transaction=True)
        pipe.srem(keys.webhooks(), webhook_id)
        pipe.delete(keys.webhook(webhook_id), keys.webhook_deliveries(webhook_id),
                    *(keys.delivery(d) for d in ids))
        removed, *_ = pipe.execute()
        return bool(removed)

    # the dispatcher's cursor

    def init_cursor(self, event_id: str) -> None:
        """Start the dispatcher at `event_id` if it has no cursor yet (it skips the history before the
        first webhook)."""
        self.r.set(keys.webhook_cursor(), event_id, nx=True)

    def cursor(self) -> str | None:
        return cast(str | None, self.r.get(keys.webhook_cursor()))

    def set_cursor(self, event_id: str) -> None:
        self.r.set(keys.webhook_cursor(), event_id)

    # deliveries

    def add_delivery(self, delivery_id: str, webhook_id: str, event: dict) -> bool:
        """Record a pending delivery of `event` unless it exists (a dispatcher that died before moving
        its cursor fans the same events out again). True when created."""
        key = keys.delivery(delivery_id)
        if not self.r.hsetnx(key, "id", delivery_id):
            return False
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={"webhook_id": webhook_id, "event": json.dumps(event), "state": PENDING,
                                "attempts": 0, "created_at": time.time()})
        pipe.expire(key, self.delivery_ttl)
        pipe.lpush(keys.webhook_deliveries(webhook_id), delivery_id)
        pipe.ltrim(keys.webhook_deliveries(webhook_id), 0, self.deliveries_keep - 1)
        pipe.execute()
        return True

    def delivery(self, delivery_id: str) -> dict | None:
        raw = self.r.hgetall(keys.delivery(delivery_id))
        return _delivery(raw) if raw.get("webhook_id") else None

    def record_attempt(self, delivery_id: str, state: str, status_code: int | None, error: str | None,
                       next_attempt_at: float | None, seconds: float) -> None:
        """Log one attempt (its answer or error) and the delivery's state after it."""
        key = keys.delivery(delivery_id)
        now = time.time()
        history = json.loads(self.r.hget(key, "history") or "[]")
        history.append({"at": now, "status_code": status_code, "error": error, "seconds": round(seconds, 4)})
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(key, "attempts", 1)
        pipe.hset(key, mapping={"state": state, "last_attempt_at": now, "status_code": status_code or "",
                                "error": error or "", "next_attempt_at": next_attempt_at or "",
                                "history": json.dumps(history[-20:])})
        pipe.execute()

    def deliveries(self, webhook_id: str, limit: int = 100) -> list[dict]:
        ids = cast(list[str], self.r.lrange(keys.webhook_deliveries(webhook_id), 0, limit - 1))
        pipe = self.r.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hgetall(keys.delivery(delivery_id))
        return [_delivery(raw) for raw in pipe.execute() if raw.get("webhook_id")]

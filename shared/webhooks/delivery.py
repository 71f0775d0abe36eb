"""Webhook deliveries: fan events out of the event stream, then send each one signed, with retries.

How an event becomes a delivery, and why none is lost: every job transition and publish is already an
entry of the event stream, written atomically with the change itself (the Lua scripts). A dispatcher
(`dispatch`, run every SWAPLINE_WEBHOOK_DISPATCH_SECONDS by each worker's housekeeping thread, and by
beat if it runs, one at a time under a lock) follows the stream from
a cursor kept in Redis: for each event and each subscribed webhook it records a pending delivery under
an id derived from (webhook, event) and enqueues its task, and only then moves the cursor past the
event. A dispatcher that dies half-way leaves the cursor where it was; the next run fans the same
events out again, finds the deliveries already recorded (same ids) and enqueues those still waiting
for a first attempt. A worker that dies while delivering has its task delivered again (late acks);
retries are new messages sent before the old one is acked. So deliveries are at least once: receivers
deduplicate by the X-Swapline-Delivery header.

Each attempt is signed over its time and its body (`sign`): X-Swapline-Timestamp carries the unix
seconds, X-Swapline-Signature the hex HMAC-SHA256 of f"{timestamp}.{body}" with the webhook's secret, so
a receiver that refuses timestamps older than a few minutes (`verify`) cannot be fed a captured
delivery again later. The secret is kept in Redis as it must be to sign (`WebhookStore.secret`), and
is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from shared import eventnames as names
from shared.backoff import doubling
from shared.jobstates import EVENT_FOR_STATE
from shared.settings import Settings
from shared.store.events import EventLog, older
from shared.store.locks import TokenLock
from shared.store.webhooks import DELIVERED, FAILED, PENDING, WebhookStore
from shared.webhooks.pinned import post
from shared.webhooks.targets import UnsafeTarget, check

log = logging.getLogger(__name__)

# The events a webhook may subscribe to: job transitions and index publishes (progress and per-process
# swaps are too chatty for HTTP callbacks; follow /v1/events for those).
EVENTS = (*EVENT_FOR_STATE.values(), names.INDEX_PUBLISHED)
SIGNATURE_HEADER = "X-Swapline-Signature"
TIMESTAMP_HEADER = "X-Swapline-Timestamp"
# How far a receiver's clock may be from the timestamp before `verify` refuses a delivery.
SIGNATURE_TOLERANCE_SECONDS = 300
EVENT_HEADER = "X-Swapline-Event"
DELIVERY_HEADER = "X-Swapline-Delivery"
ATTEMPT_HEADER = "X-Swapline-Attempt"
DISPATCH_LOCK_SECONDS = 60
DISPATCH_BATCH = 500
DISPATCH_MAX_BATCHES = 20


class WebhookServices(Protocol):
    """What deliveries need of a process's services (`shared.services.Services` has it all)."""

    settings: Settings
    webhooks: WebhookStore
    events: EventLog
    webhook_dispatch_lock: TokenLock


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: the hex HMAC-SHA256 of f"{timestamp}.{body}" with the secret."""
    return hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, now: float | None = None,
           tolerance: float = SIGNATURE_TOLERANCE_SECONDS) -> bool:
    """What a receiver does with a delivery (in Python): the timestamp header is unix seconds at most
    `tolerance` away from now, and the signature header matches, compared in constant time."""
    if not re.fullmatch(r"[0-9]{1,12}", timestamp):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode("utf-8", "replace"))


def delivery_id(webhook_id: str, event_id: str) -> str:
    return hashlib.sha256(f"{webhook_id}|{event_id}".encode()).hexdigest()[:32]


def _event_ms(event_id: str) -> int:
    return int(event_id.split("-")[0])


def subscribed(webhook: dict, event: dict) -> bool:
    """The webhook wants this event: its type, its collection (when the webhook names one), and it
    happened after the webhook was created."""
    return (event["type"] in webhook["events"]
            and (webhook["collection"] is None or webhook["collection"] == event["collection"])
            and _event_ms(event["id"]) >= int(webhook["created_at"] * 1000))


def dispatch(svc: WebhookServices, send: Callable[[str], None]) -> int:
    """Turn new events into deliveries and `send(delivery_id)` each; returns how many were sent.
    Does nothing while another dispatcher holds the lock."""
    token = svc.webhook_dispatch_lock.acquire(DISPATCH_LOCK_SECONDS)
    if token is None:
        return 0
    try:
        return _dispatch(svc, send)
    finally:
        svc.webhook_dispatch_lock.release(token)


def _dispatch(svc: WebhookServices, send: Callable[[str], None]) -> int:
    store = svc.webhooks
    hooks = store.all()
    cursor = store.cursor() or "0-0"
    if not hooks:
        store.set_cursor(svc.events.last_id())  # nothing subscribes: skip what happened meanwhile
        return 0
    oldest = svc.events.oldest_id()
    if cursor != "0-0" and oldest and older(cursor, oldest):
        log.warning("event=webhooks.events_trimmed cursor=%s oldest=%s", cursor, oldest)
    sent = 0
    for _ in range(DISPATCH_MAX_BATCHES):
        events = svc.events.read_after(cursor, count=DISPATCH_BATCH)
        if not events:
            break
        for event in events:
            for hook in hooks:
                if not subscribed(hook, event):
                    continue
                did = delivery_id(hook["id"], event["id"])
                created = store.add_delivery(did, hook["id"], event)
                existing = None if created else store.delivery(did)
                if created or (existing and existing["state"] == PENDING and existing["attempts"] == 0):
                    send(did)
                    sent += 1
        cursor = events[-1]["id"]
        store.set_cursor(cursor)
    if sent:
        log.info("event=webhooks.dispatched deliveries=%s cursor=%s", sent, cursor)
    return sent


@dataclass
class Outcome:
    state: str  # pending (retry after `retry_in`), delivered, failed, or "skipped"
    retry_in: float | None = None


def backoff(svc: WebhookServices, attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: base * 2^(attempt-1), at most the configured maximum."""
    s = svc.settings
    return doubling(s.webhook_retry_base_seconds, attempt, s.webhook_retry_max_seconds)


def deliver(svc: WebhookServices, did: str) -> Outcome:
    """One attempt at a pending delivery: resolve and check the target again, POST the signed body to
    a checked address within the attempt's total deadline, log it."""
    store, s = svc.webhooks, svc.settings
    delivery = store.delivery(did)
    if delivery is None or delivery["state"] != PENDING:
        return Outcome("skipped")  # already delivered or given up (a duplicate message), or gone
    hook = store.get(delivery["webhook_id"])
    secret = store.secret(delivery["webhook_id"])
    if hook is None or secret is None:
        return Outcome("skipped")  # the webhook was deleted
    attempt = delivery["attempts"] + 1
    body = json.dumps({"id": did, "webhook_id": hook["id"], "event": delivery["event"]}, sort_keys=True).encode()
    started = time.perf_counter()
    status, error = None, None
    try:
        addresses = check(hook["url"], s.webhook_allow_private)
    except UnsafeTarget as unsafe:
        store.record_attempt(did, FAILED, None, str(unsafe), None, time.perf_counter() - started)
        log.warning("event=webhooks.refused delivery=%s webhook=%s error=%r", did, hook["id"], str(unsafe))
        return Outcome(FAILED)
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "swapline-webhooks",
               TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret, timestamp, body),
               EVENT_HEADER: delivery["event"]["type"], DELIVERY_HEADER: did, ATTEMPT_HEADER: str(attempt)}
    try:
        status = post(hook["url"], addresses, body, headers, s.webhook_timeout_seconds).status
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: a name IDNA cannot encode
        error = f"{type(exc).__name__}: {exc}"[:500]
    seconds = time.perf_counter() - started
    if error is None:
        store.record_attempt(did, DELIVERED, status, None, None, seconds)
        log.info("event=webhooks.delivered delivery=%s webhook=%s attempt=%s status=%s", did, hook["id"], attempt,
                 status)
        return Outcome(DELIVERED)
    if attempt >= s.webhook_max_attempts:
        store.record_attempt(did, FAILED, status, error, None, seconds)
        log.warning("event=webhooks.gave_up delivery=%s webhook=%s attempts=%s error=%r", did, hook["id"], attempt,
                    error)
        return Outcome(FAILED)
    wait = backoff(svc, attempt)
    store.record_attempt(did, PENDING, status, error, time.time() + wait, seconds)
    log.info("event=webhooks.retry delivery=%s webhook=%s attempt=%s error=%r retry_in=%.1f", did, hook["id"],
             attempt, error, wait)
    return Outcome(PENDING, wait)

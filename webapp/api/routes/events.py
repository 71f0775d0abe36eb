"""Server-sent events: job transitions, progress and index swaps, live."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import redis
from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from shared import eventnames as names
from shared.store.events import STREAM_ID, EventLog, older
from webapp.api.auth import scope_filtered, visible_collections
from webapp.api.eventhub import READ_COUNT, Subscription
from webapp.api.runtime import swapline
from webapp.api.schemas.common import ErrorSchema
from webapp.api.schemas.events import EventsQuerySchema

blp = Blueprint("events", __name__, url_prefix="/v1/events", description="Live job and index events (SSE)")


def _format(event: dict) -> str:
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


KEEPALIVE = ": keepalive\n\n"
# While Redis cannot be read for a catch-up, the stream tries again this often (heartbeats go on).
CATCH_UP_RETRY_SECONDS = 1.0


def event_stream(events: EventLog, sub: Subscription, after: str, collection: str | None, heartbeat: float,
                 max_seconds: float, clock: Callable[[], float] = time.monotonic,
                 visible: frozenset[str] | None = None):
    """Yield SSE frames after stream id `after`: first what Redis holds after it (a resumed client),
    then what the hub hands over (only events of `collection`, and of `visible` unless it is None: the
    collections of the caller's key); a comment every `heartbeat` idle seconds; after `max_seconds` a final
    comment and the end (the client reconnects with the last id it saw and misses nothing).

    Never raises: a Redis error only delays the catch-up, so the HTTP response always ends cleanly."""
    yield f"retry: 2000\n: stream from {after}\n\n"
    deadline = clock() + max_seconds
    next_beat = clock() + heartbeat
    catching_up, checked_gap, retry_at = True, False, 0.0
    while True:
        now = clock()
        if now >= deadline:
            yield f": this stream ends after {max_seconds:g} s; reconnect with Last-Event-ID: {after}\n\n"
            return
        frames: list[str] = []
        if sub.lagged.is_set():
            sub.lagged.clear()
            sub.drain()
            catching_up = True
        if catching_up and now >= retry_at:
            try:
                if not checked_gap:
                    oldest = events.oldest_id()
                    checked_gap = True
                    if after != "0-0" and oldest and older(after, oldest):
                        # The stream was trimmed past where the client stopped: say so, never hide the gap.
                        gap = json.dumps({"requested_after": after, "oldest": oldest})
                        frames.append(f"event: {names.GAP}\ndata: {gap}\n\n")
                batch = events.read_after(after, count=READ_COUNT)
                catching_up = len(batch) == READ_COUNT
            except (redis.RedisError, OSError):
                batch, retry_at = [], now + CATCH_UP_RETRY_SECONDS
        else:
            wait = min(next_beat, deadline) - now
            if catching_up:
                wait = min(wait, retry_at - now)
            batch = sub.get(wait) or []
        for event in batch:
            if older(after, event["id"]):  # the hub may hand over what the catch-up already sent
                after = event["id"]
                if (collection is None or event["collection"] == collection) \
                        and (visible is None or event["collection"] in visible):
                    frames.append(_format(event))
        if frames:
            yield "".join(frames)
            next_beat = clock() + heartbeat
        elif clock() >= next_beat:
            yield KEEPALIVE
            next_beat = clock() + heartbeat


@blp.route("")
class Events(MethodView):
    @scope_filtered
    @blp.doc(operationId="streamEvents")
    @blp.arguments(EventsQuerySchema(), location="query")
    @blp.response(200, description="A text/event-stream of events; each SSE id is the Redis stream id, "
                                   "so reconnecting with Last-Event-ID misses nothing.",
                  content_type="text/event-stream")
    @blp.alt_response(422, schema=ErrorSchema, description="Malformed Last-Event-ID")
    @blp.alt_response(503, schema=ErrorSchema, description="Too many open streams on this process")
    def get(self, args):
        """Follow job and index events as server-sent events."""
        rt = swapline.runtime
        settings = rt.settings
        events = rt.svc.events
        visible = visible_collections()  # read here: the generator runs outside the request context
        after = request.headers.get("Last-Event-ID") or args.get("last_event_id")
        if after and not STREAM_ID.match(after):
            abort(422, message="Last-Event-ID must be a stream id like 1700000000000-0")
        after = after or events.last_id()
        if not rt.sse_slots.acquire(blocking=False):
            abort(503, message="too many open event streams; retry shortly", headers={"Retry-After": "5"})
        sock = request.environ.get("gunicorn.socket")
        if sock is not None:
            # A client that stops reading must not hold this thread forever.
            sock.settimeout(settings.sse_send_timeout_seconds)

        sub = rt.events_hub.subscribe()
        freed = threading.Event()

        def free() -> None:  # from the generator's end and from the response's close, whichever is first
            if not freed.is_set():
                freed.set()
                sub.close()
                rt.sse_slots.release()

        def generate():
            try:
                yield from event_stream(events, sub, after, args.get("collection"), settings.sse_heartbeat_seconds,
                                        settings.sse_max_seconds, visible=visible)
            finally:
                free()

        response = Response(generate(), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response.call_on_close(free)
        return response

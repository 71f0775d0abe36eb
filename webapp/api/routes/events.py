"""Server-sent events: job transitions, progress and index swaps, live."""

from __future__ import annotations

import json
import time

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from marshmallow import Schema, fields

from shared.store.events import STREAM_ID, EventLog, older
from webapp.api.runtime import swapline
from webapp.api.schemas import ErrorSchema

blp = Blueprint("events", __name__, url_prefix="/v1/events", description="Live job and index events (SSE)")

class EventsQuerySchema(Schema):
    collection = fields.String(metadata={"description": "only events of this collection"})
    last_event_id = fields.String(metadata={"description": "resume after this event id (same as the "
                                                           "Last-Event-ID header, for clients that cannot set it)"})


def _format(event: dict) -> str:
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


def event_stream(events: EventLog, after: str, collection: str | None, heartbeat: float, max_seconds: float):
    """Yield SSE frames after stream id `after`; a comment line every `heartbeat` idle seconds; end
    after `max_seconds` (the client reconnects with the last id it saw)."""
    yield f"retry: 2000\n: stream from {after}\n\n"
    oldest = events.oldest_id()
    if after != "0-0" and oldest and older(after, oldest):
        # The stream was trimmed past where the client stopped: say so instead of hiding the gap.
        yield f"event: gap\ndata: {json.dumps({'requested_after': after, 'oldest': oldest})}\n\n"
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        block = int(min(heartbeat, max(0.05, deadline - time.monotonic())) * 1000)
        batch = events.read_after(after, count=100, block_ms=block)
        if not batch:
            yield ": keepalive\n\n"
            continue
        for event in batch:
            after = event["id"]
            if collection is None or event["collection"] == collection:
                yield _format(event)


@blp.route("")
class Events(MethodView):
    @blp.arguments(EventsQuerySchema, location="query")
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

        def generate():
            try:
                yield from event_stream(events, after, args.get("collection"), settings.sse_heartbeat_seconds,
                                        settings.sse_max_seconds)
            finally:
                rt.sse_slots.release()

        return Response(generate(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

"""The event stream's query."""

from __future__ import annotations

from marshmallow import Schema, fields


class EventsQuerySchema(Schema):
    collection = fields.String(metadata={"description": "only events of this collection"})
    last_event_id = fields.String(metadata={"description": "resume after this event id (same as the "
                                                           "Last-Event-ID header, for clients that cannot set it)"})

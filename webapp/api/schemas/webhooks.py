"""Webhooks and their deliveries."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from shared.store.webhooks import DELIVERY_STATES
from shared.webhooks.delivery import EVENTS as WEBHOOK_EVENTS
from webapp.api.schemas.common import StrictSchema, collection_name


class WebhookCreateSchema(StrictSchema):
    url = fields.String(required=True, validate=validate.Length(min=1, max=2048), metadata={
        "description": "an http(s) URL; its host must resolve to public addresses only (checked now and at "
                       "every delivery) unless SWAPLINE_WEBHOOK_ALLOW_PRIVATE=1"})
    events = fields.List(fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)), required=True,
                         validate=validate.Length(min=1, max=len(WEBHOOK_EVENTS)))
    collection = collection_name(allow_none=True, load_default=None,
                                 metadata={"description": "only events of this collection (default: all)"})


class WebhookSchema(Schema):
    id = fields.String(required=True)
    url = fields.String(required=True)
    events = fields.List(fields.String(), required=True)
    collection = fields.String(allow_none=True)
    created_at = fields.String(allow_none=True)


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(required=True, metadata={
        "description": "the signing secret, shown this once: each delivery carries X-Swapline-Timestamp "
                       "(unix seconds) and X-Swapline-Signature, the hex HMAC-SHA256 of "
                       "f\"{timestamp}.{raw body}\" with this secret"})


class WebhookListSchema(Schema):
    webhooks = fields.List(fields.Nested(WebhookSchema), required=True)


class DeliveryAttemptSchema(Schema):
    at = fields.String(allow_none=True)
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    seconds = fields.Float()


class DeliverySchema(Schema):
    id = fields.String(required=True, metadata={"description": "also sent as X-Swapline-Delivery"})
    event = fields.Dict(metadata={"description": "the event, as GET /v1/events shows it"})
    state = fields.String(validate=validate.OneOf(DELIVERY_STATES), metadata={
        "description": "pending (waiting for an attempt or a retry), delivered (a 2xx answer) or failed "
                       "(SWAPLINE_WEBHOOK_MAX_ATTEMPTS attempts, or a refused target)"})
    attempts = fields.Integer()
    created_at = fields.String(allow_none=True)
    last_attempt_at = fields.String(allow_none=True)
    next_attempt_at = fields.String(allow_none=True)
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    history = fields.List(fields.Nested(DeliveryAttemptSchema), metadata={"description": "attempts, oldest first"})


class DeliveryListQuerySchema(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=100))


class DeliveryListSchema(Schema):
    deliveries = fields.List(fields.Nested(DeliverySchema), required=True, metadata={"description": "newest first"})

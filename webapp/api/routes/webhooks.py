"""Webhooks: subscriptions to job and index events, delivered signed by the workers, and their logs."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint, abort

from shared.jobstates import iso_time
from shared.names import is_job_id
from shared.webhooks.targets import UnsafeTarget, check
from webapp.api.auth import requires
from webapp.api.runtime import swapline
from webapp.api.schemas.common import ErrorSchema
from webapp.api.schemas.webhooks import (
    DeliveryListQuerySchema,
    DeliveryListSchema,
    WebhookCreatedSchema,
    WebhookCreateSchema,
    WebhookListSchema,
    WebhookSchema,
)

blp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks",
                description="HTTP callbacks on job and index events, signed with HMAC-SHA256")


def _shown(webhook: dict) -> dict:
    return {**webhook, "created_at": iso_time(webhook["created_at"])}


def _load(webhook_id: str) -> dict:
    webhook = swapline.runtime.svc.webhooks.get(webhook_id) if is_job_id(webhook_id) else None
    if webhook is None:
        abort(404, message=f"webhook {webhook_id!r} does not exist")
    return webhook


@blp.route("")
class Webhooks(MethodView):
    @requires("admin")
    @blp.arguments(WebhookCreateSchema())
    @blp.response(201, WebhookCreatedSchema)
    def post(self, body):
        """Subscribe a URL to events. The answer carries the signing secret, this once.

        Each delivery is a POST of `{"id", "webhook_id", "event"}` with the headers X-Swapline-Timestamp
        (unix seconds), X-Swapline-Signature (hex HMAC-SHA256 of `{timestamp}.{raw body}` with the
        secret: refuse old timestamps), X-Swapline-Event, X-Swapline-Delivery (the same id on every
        retry: deliveries are at least once) and X-Swapline-Attempt. A non-2xx answer
        or no answer is retried with exponential backoff (SWAPLINE_WEBHOOK_RETRY_BASE_SECONDS doubling,
        SWAPLINE_WEBHOOK_MAX_ATTEMPTS attempts); redirects are not followed."""
        svc = swapline.runtime.svc
        try:
            check(body["url"], svc.settings.webhook_allow_private)
        except UnsafeTarget as unsafe:
            abort(422, message=f"url: {unsafe}", errors={"url": [str(unsafe)]})
        svc.webhooks.init_cursor(svc.events.last_id())
        webhook, secret = svc.webhooks.create(body["url"], body["events"], body["collection"])
        return {**_shown(webhook), "secret": secret}, 201, {"Location": f"/v1/webhooks/{webhook['id']}"}

    @requires("admin")
    @blp.response(200, WebhookListSchema)
    def get(self):
        """Every webhook (without secrets), oldest first."""
        return {"webhooks": [_shown(w) for w in swapline.runtime.svc.webhooks.all()]}


@blp.route("/<string:webhook_id>")
class Webhook(MethodView):
    @requires("admin")
    @blp.response(200, WebhookSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such webhook")
    def get(self, webhook_id):
        """One webhook (without its secret)."""
        return _shown(_load(webhook_id))

    @blp.response(204)
    @blp.alt_response(404, schema=ErrorSchema, description="No such webhook")
    def delete(self, webhook_id):
        """Delete the webhook and its delivery log; pending deliveries are dropped."""
        _load(webhook_id)
        swapline.runtime.svc.webhooks.delete(webhook_id)


@blp.route("/<string:webhook_id>/deliveries")
class Deliveries(MethodView):
    @requires("admin")
    @blp.arguments(DeliveryListQuerySchema(), location="query")
    @blp.response(200, DeliveryListSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such webhook")
    def get(self, args, webhook_id):
        """The webhook's most recent deliveries, newest first, each with its attempts."""
        _load(webhook_id)
        found = swapline.runtime.svc.webhooks.deliveries(webhook_id, args["limit"])
        for d in found:
            for key in ("created_at", "last_attempt_at", "next_attempt_at"):
                d[key] = iso_time(d[key])
            for attempt in d["history"]:
                attempt["at"] = iso_time(attempt["at"])
        return {"deliveries": found}

"""Extensions, created unbound here and bound to an app in `create_app`."""

from __future__ import annotations

import logging

from flask import Flask, current_app
from flask_smorest import Api as _Api
from werkzeug.exceptions import HTTPException

from shared.celeryconfig import enqueue, make_celery
from shared.services import Services, build_services
from shared.settings import Settings
from webapp.live import IndexWatcher, LiveIndexes
from webapp.schemas import ErrorSchema

log = logging.getLogger(__name__)

ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid",
    429: "too_many_requests", 500: "internal_error", 503: "unavailable",
}


class Api(_Api):
    """flask-smorest's Api with Swapline's one error shape: {"code", "message", "errors"?} (+ extras)."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException):
        data = dict(getattr(error, "data", None) or {})
        headers = data.pop("headers", None) or {}
        data.pop("exc", None)
        messages = data.pop("messages", None)
        payload = {
            "code": data.pop("code", None) or ERROR_CODES.get(error.code, "error"),
            "message": data.pop("message", None) or error.description or error.name,
        }
        if messages:
            # webargs nests messages by location ("json", "query"); one location needs no nesting.
            payload["errors"] = next(iter(messages.values())) if len(messages) == 1 else messages
        payload.update(data)
        return payload, error.code, headers


class Runtime:
    """What one app instance runs: domain services, the Celery sender, the live indexes and their
    watcher thread."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.celery = make_celery(settings)
        self.svc: Services = build_services(settings, lambda kind, job_id: enqueue(self.celery, kind, job_id),
                                            torch_threads=settings.api_torch_threads)
        self.live = LiveIndexes(settings.search_cache_size)
        self.watcher = IndexWatcher(self.svc, self.live, warm_embedder=settings.embedder == "minilm")

    def start(self) -> None:
        self.watcher.start()

    def close(self) -> None:
        self.watcher.stop()
        self.svc.redis.close()


class Swapline:
    """Binds a `Runtime` to an app; views reach it as `swapline.runtime`."""

    def init_app(self, app: Flask, settings: Settings) -> None:
        app.extensions["swapline"] = Runtime(settings)

    @staticmethod
    def start(app: Flask) -> None:
        """Start the index watcher once the app is fully set up (hooks such as metrics are in place)."""
        app.extensions["swapline"].start()

    @property
    def runtime(self) -> Runtime:
        return current_app.extensions["swapline"]


# flask-smorest's Api keeps one app and one spec, so each app gets its own (see create_app); the
# Swapline extension is app-independent and reaches its per-app runtime through current_app.
swapline = Swapline()

"""Extensions, created unbound here and bound to an app in `create_app`."""

from __future__ import annotations

import logging
import threading

import redis
from flask import Flask, current_app, request
from flask_smorest import Api as _Api
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared.celeryconfig import enqueue, make_celery
from shared.jobs import QueueFull
from shared.services import Services, build_services
from shared.settings import Settings
from webapp.backpressure import queue_full_error
from webapp.live import IndexWatcher, LiveIndexes
from webapp.schemas import ErrorSchema

log = logging.getLogger(__name__)

ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid",
    429: "too_many_requests", 500: "internal_error", 503: "unavailable",
}


JSON_VALUES = (str, int, float, bool, list, dict, type(None))


class Api(_Api):
    """flask-smorest's Api with Swapline's one error shape: {"code", "message", "errors"?} (+ extras),
    used for every 4xx/5xx (aborts, unknown routes, 405, 413 from MAX_CONTENT_LENGTH, unhandled
    exceptions), and an OpenAPI document with the auth scheme and every error answer."""

    ERROR_SCHEMA = ErrorSchema
    SWAGGER_UI_CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist/"

    def init_app(self, app: Flask, *, spec_kwargs=None):
        app.config.setdefault("OPENAPI_SWAGGER_UI_PATH", "docs")
        app.config.setdefault("OPENAPI_SWAGGER_UI_URL", self.SWAGGER_UI_CDN)
        super().init_app(app, spec_kwargs=spec_kwargs)

    def _init_spec(self, **options):
        from webapp.apidoc import SwaplineSpecPlugin, api_description
        from webapp.auth import SCHEME_NAME, SECURITY_SCHEME

        options["extra_plugins"] = [*(options.get("extra_plugins") or ()), SwaplineSpecPlugin()]
        settings = self._app.config.get("SWAPLINE_SETTINGS")
        if settings is not None:
            options.setdefault("info", {"description": api_description(settings)})
        super()._init_spec(**options)
        self.spec.components.security_scheme(SCHEME_NAME, SECURITY_SCHEME)

    def _register_error_handlers(self):
        super()._register_error_handlers()
        self._app.register_error_handler(redis.ConnectionError, self.handle_redis_down)
        self._app.register_error_handler(redis.TimeoutError, self.handle_redis_down)
        self._app.register_error_handler(QueueFull, lambda full: self.handle_http_exception(queue_full_error(full)))
        self._app.register_error_handler(Exception, self.handle_unexpected)

    def handle_http_exception(self, error: HTTPException):
        data = dict(getattr(error, "data", None) or {})
        # Headers the exception carries (Allow on 405, WWW-Authenticate), then those passed to abort.
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        headers.update(data.pop("headers", None) or {})
        data.pop("exc", None)
        data.pop("schema", None)  # webargs passes the marshmallow schema along; it is no part of the answer
        messages = data.pop("messages", None)
        message = data.pop("message", None)
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        if message is None and isinstance(error, RequestEntityTooLarge) and limit:
            message = f"the request body exceeds {limit} bytes (SWAPLINE_MAX_REQUEST_BYTES)"
        payload = {
            "code": data.pop("code", None) or ERROR_CODES.get(error.code, "error"),
            "message": message or error.description or error.name,
        }
        if messages:
            # webargs nests messages by location ("json", "query"); one location needs no nesting.
            errors = next(iter(messages.values())) if len(messages) == 1 else messages
            payload["errors"] = errors if isinstance(errors, dict) else {"_schema": errors}
        payload.update({k: v for k, v in data.items() if isinstance(v, JSON_VALUES)})
        return payload, error.code or 500, headers

    def handle_redis_down(self, error: Exception):
        log.error("event=http.redis_unavailable error=%r", str(error))
        payload = {"code": "unavailable", "message": "Redis is unavailable; retry shortly"}
        return payload, 503, {"Retry-After": "5"}

    def handle_unexpected(self, error: Exception):
        if isinstance(error, HTTPException):  # handled above; kept for safety when MRO ties
            return self.handle_http_exception(error)
        log.exception("event=http.unhandled method=%s path=%s", request.method, request.path)
        return {"code": "internal_error",
                "message": "internal server error; the details are in the server log"}, 500


class Runtime:
    """What one app instance runs: domain services, the Celery sender, the live indexes and their
    watcher thread."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.celery = make_celery(settings)
        self.svc: Services = build_services(settings, lambda kind, job_id: enqueue(self.celery, kind, job_id),
                                            torch_threads=settings.api_torch_threads)
        self.live = LiveIndexes(settings.search_cache_size)
        # Open SSE streams of this app; each holds a server thread and a blocked Redis read.
        self.sse_slots = threading.BoundedSemaphore(settings.sse_max_streams)
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

"""One error shape for every 4xx/5xx, from aborts, unknown routes, 405, 413 from MAX_CONTENT_LENGTH,
Redis outages, full queues and unhandled exceptions alike: an RFC 9457 problem document
(`application/problem+json`: type, title, status, detail) that also carries Swapline's own members
`code`, `message` (the same text as `detail`), `errors` and extras such as job_id; and the
flask-smorest `Api` that answers it and documents every error in OpenAPI."""

from __future__ import annotations

import logging
from typing import cast

import redis
from flask import Flask, Response, current_app, request
from flask_smorest import Api as _Api
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, ServiceUnavailable

from shared.errors import JobInProgress, RequestRefused
from shared.jobstates import QueueFull
from shared.storage import StorageFull
from webapp.api import apidoc, auth
from webapp.api.problem import PROBLEM_JSON, problem_body
from webapp.api.schemas.common import ErrorSchema

log = logging.getLogger(__name__)

ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid",
    429: "too_many_requests", 500: "internal_error", 503: "unavailable", 507: "insufficient_storage",
}
JSON_VALUES = (str, int, float, bool, list, dict, type(None))


def problem(status: int, code: str, message: str, headers: dict | None = None, **members) -> Response:
    """The answer for an error (see webapp.api.problem for the body)."""
    # Flask types the JSON provider's answer as werkzeug's base Response; it is the app's response_class.
    response = cast(Response, current_app.json.response(problem_body(status, code, message, **members)))
    response.status_code = status
    response.mimetype = PROBLEM_JSON
    response.headers.update(headers or {})
    return response


# A client backs off this long on a full queue; queues drain at the speed of the workers, so a short,
# fixed hint spreads retries without promising a time we cannot know.
RETRY_AFTER_SECONDS = 5

# For `@blp.alt_response(503, **QUEUE_FULL)` on every job-creating view.
QUEUE_FULL = {
    "schema": ErrorSchema,
    "description": "The job's queue holds its bound of queued jobs (SWAPLINE_MAX_QUEUED_INGEST / "
                   "SWAPLINE_MAX_QUEUED_INDEX); nothing was created. Retry after Retry-After seconds.",
    "headers": {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer"}}},
}


def queue_full_error(full: QueueFull) -> ServiceUnavailable:
    """The 503 for a refused submission; job-creating views just let QueueFull propagate."""
    error = ServiceUnavailable()
    # What abort() attaches and flask-smorest's handler reads; werkzeug does not declare the attribute.
    error.data = {"code": "queue_full", "queue": full.queue, "headers": {"Retry-After": str(RETRY_AFTER_SECONDS)},  # type: ignore[attr-defined]
                  "message": f"the {full.queue} queue is full ({full.depth} queued jobs, bound {full.bound}); "
                             "nothing was created, retry later"}
    return error


class Api(_Api):
    """flask-smorest's Api with Swapline's error shape and an OpenAPI document that carries the auth
    scheme and every error answer."""

    ERROR_SCHEMA = ErrorSchema

    def init_app(self, app: Flask, *, spec_kwargs=None):
        apidoc.serve_docs_ui(app)
        super().init_app(app, spec_kwargs=spec_kwargs)

    def _init_spec(self, **options):
        options["extra_plugins"] = [*(options.get("extra_plugins") or ()), apidoc.SwaplineSpecPlugin()]
        settings = self._app.config.get("SWAPLINE_SETTINGS")
        if settings is not None:
            options.setdefault("info", {"description": apidoc.api_description(settings)})
        super()._init_spec(**options)
        self.spec.components.security_scheme(auth.SCHEME_NAME, auth.SECURITY_SCHEME)

    def _register_responses(self):
        # The response components flask-smorest documents for each status carry the problem type.
        default = self.DEFAULT_RESPONSE_CONTENT_TYPE
        self.DEFAULT_RESPONSE_CONTENT_TYPE = PROBLEM_JSON
        try:
            super()._register_responses()
        finally:
            self.DEFAULT_RESPONSE_CONTENT_TYPE = default

    def _register_error_handlers(self):
        super()._register_error_handlers()
        self._app.register_error_handler(redis.ConnectionError, self.handle_redis_down)
        self._app.register_error_handler(redis.TimeoutError, self.handle_redis_down)
        self._app.register_error_handler(QueueFull, lambda full: self.handle_http_exception(queue_full_error(full)))
        self._app.register_error_handler(StorageFull, self.handle_storage_full)
        self._app.register_error_handler(JobInProgress, self.handle_job_in_progress)
        self._app.register_error_handler(RequestRefused, self.handle_refused)
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
        status = error.code or 500
        code = data.pop("code", None) or ERROR_CODES.get(status, "error")
        members = {}
        if messages:
            # webargs nests messages by location ("json", "query"); one location needs no nesting.
            errors = next(iter(messages.values())) if len(messages) == 1 else messages
            members["errors"] = errors if isinstance(errors, dict) else {"_schema": errors}
        members.update({k: v for k, v in data.items() if isinstance(v, JSON_VALUES)})
        return problem(status, code, message or error.description or error.name, headers, **members)

    def handle_redis_down(self, error: Exception):
        log.error("event=http.redis_unavailable error=%r", str(error))
        return problem(503, "unavailable", "Redis is unavailable; retry shortly", {"Retry-After": "5"})

    def handle_storage_full(self, error: StorageFull):
        log.error("event=http.storage_full error=%r", str(error))
        return problem(507, ERROR_CODES[507], f"{error.strerror}; nothing was created",
                       {"Retry-After": str(RETRY_AFTER_SECONDS * 12)})

    def handle_job_in_progress(self, busy: JobInProgress):
        """409 naming the job in the way (a second drop, rebuild or reconcile): views let it propagate."""
        return problem(409, busy.code, busy.message, {"Location": f"/v1/jobs/{busy.job_id}"}, job_id=busy.job_id)

    def handle_refused(self, refused: RequestRefused):
        """A bound or a check of the domain said no (shared.limits, shared.search.service)."""
        members = {"errors": refused.errors} if refused.errors else {}
        return problem(refused.status, refused.code, refused.message, **members)

    def handle_unexpected(self, error: Exception):
        if isinstance(error, HTTPException):  # handled above; kept for safety when MRO ties
            return self.handle_http_exception(error)
        log.exception("event=http.unhandled method=%s path=%s", request.method, request.path)
        return problem(500, "internal_error", "internal server error; the details are in the server log")

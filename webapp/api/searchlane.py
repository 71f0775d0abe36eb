"""The search route's fast lane: `POST /v1/collections/<name>/search` answered beside Flask's request
machinery when the request is plain, with the answer the route gives (`webapp.api.routes.search.answer`).

A search's own work is the query's embedding and the index; around it, Flask's request context, the
URL map, the request hooks, webargs and marshmallow cost more Python per request than the rest of the
application (README "The search route's fast lane" has the figures of tests/bench/latency.py and
concurrency.py before and after). The
lane checks what those hooks check, the same functions doing it where they can, and answers only a
request that every check lets through unchanged:

- a POST with a Content-Length within SWAPLINE_MAX_REQUEST_BYTES, `Content-Type: application/json`;
- a caller `webapp.api.auth.plain_principal` lets in (a known Bearer key with the view's role on the
  collection, or an API without keys addressed to an allowed host);
- a UTF-8 body that is JSON which round-trips (`webapp.api.jsonbody`), an object whose every field is
  one of the schema's, of its declared JSON type, passing the schema's own validators (`PlainBody`);
- an answer of 200: every refusal (404, 409, 422, 503, ...) is raised, not answered.

Anything else (a wrong key, a bad body, an unknown collection, a refusal, an error) is handed to
Flask with the body as read, and Flask answers it as it answers any request: one place writes every
error, counts failed keys and logs refusals. The lane stamps X-Request-ID, binds the request's log
context and observes the request and search latency histograms as the hooks do; Server-Timing `app`
(webapp.api.apptiming) is added around it. tests/test_searchlane.py holds the lane's answers equal to
Flask's, headers included, and checks what it hands on.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable

import redis
from flask import Flask
from marshmallow import Schema, ValidationError, fields, missing
from werkzeug.exceptions import HTTPException

from shared import logs
from shared.errors import RequestRefused
from shared.names import is_collection_name
from webapp.api import auth, jsonbody, requestid
from webapp.api.metrics import SEARCH_ENDPOINT
from webapp.api.routes.search import Search, answer
from webapp.api.schemas.search import SearchQuerySchema

log = logging.getLogger(__name__)

PREFIX, SUFFIX = "/v1/collections/", "/search"
JSON_TYPE = "application/json"


class PlainBody:
    """What `schema` loads from a JSON value whose fields are all of its declared JSON types and pass its
    validators; None for anything else (which the schema itself then answers). Knows String, strict
    Integer and Dict (String keys, any values) fields loaded under their own names; a schema with any
    other field is refused when built."""

    def __init__(self, schema: Schema):
        self.fields = dict(schema.fields)
        unknown = [name for name, field in self.fields.items() if not _known(field)]
        if unknown:
            raise TypeError(f"PlainBody does not know the fields {unknown} of {type(schema).__name__}")
        self.defaults = {name: f.load_default for name, f in self.fields.items() if f.load_default is not missing}
        self.required = {name for name, f in self.fields.items() if f.required}

    def __call__(self, value: object) -> dict | None:
        if type(value) is not dict or not self.required <= value.keys() or not value.keys() <= self.fields.keys():
            return None
        for name, item in value.items():
            field = self.fields[name]
            if item is None:
                if not field.allow_none:
                    return None
                continue
            if not _of_type(field, item):
                return None
            try:
                for check in field.validators:
                    check(item)
            except ValidationError:
                return None
        return {**self.defaults, **value}


def _known(field: fields.Field) -> bool:
    if field.data_key is not None or field.attribute is not None or callable(field.load_default):
        return False
    if isinstance(field, fields.Integer):
        return field.strict
    if isinstance(field, fields.Dict):
        return isinstance(field.key_field, fields.String | None) and field.value_field is None
    return isinstance(field, fields.String)


def _of_type(field: fields.Field, item: object) -> bool:
    if isinstance(field, fields.String):
        return type(item) is str
    if isinstance(field, fields.Integer):
        return type(item) is int  # not bool, not float
    return type(item) is dict  # JSON object keys are strings


class SearchLane:
    """The WSGI callable around Flask's (`inner`) that answers plain searches itself."""

    def __init__(self, app: Flask, inner: Callable):
        self.app = app
        self.inner = inner
        self.body = PlainBody(SearchQuerySchema())
        self.role: str = getattr(Search.post, auth.ROLE_ATTR)
        self.route = next(rule.rule for rule in app.url_map.iter_rules() if rule.endpoint == SEARCH_ENDPOINT)
        self.max_bytes: int = app.config["MAX_CONTENT_LENGTH"]
        self.metrics = app.extensions["swapline_metrics"]
        self.answered = 0  # searches answered here, and handed to Flask (for tests and debugging)
        self.handed_on = 0

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        name = self._collection(environ)
        if name is None:
            return self.inner(environ, start_response)
        started = time.perf_counter()
        raw = self._body(environ)
        body = None if raw is None else self._plain(environ, raw, name)
        if body is not None:
            request_id = requestid.of_request(environ.get("HTTP_X_REQUEST_ID", ""))
            token = logs.bind(request_id=request_id, collection=name)
            try:
                with self.app.app_context():
                    data, headers = answer(name, body)
            except (HTTPException, RequestRefused, redis.RedisError):
                pass  # a refusal, or Redis unreachable for a kept version: Flask writes the answer
            except Exception:
                log.warning("event=search.lane_failed collection=%s message=%r", name,
                            "the search is handed to the full request path", exc_info=True)
            else:
                start_response("200 OK", [("Content-Type", JSON_TYPE), ("Content-Length", str(len(data))),
                                          *headers.items(), (requestid.HEADER, request_id)])
                self.metrics.observe("POST", self.route, 200, time.perf_counter() - started, name,
                                     headers["X-Cache"])
                self.answered += 1
                return [data]
            finally:
                logs.unbind(token)
        self.handed_on += 1
        if raw is not None:
            environ["wsgi.input"] = io.BytesIO(raw)
        return self.inner(environ, start_response)

    @staticmethod
    def _collection(environ: dict) -> str | None:
        """The collection a search request names (None for any other request, or an unusual one)."""
        path: str = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("SCRIPT_NAME") or not (
                path.startswith(PREFIX) and path.endswith(SUFFIX)):
            return None
        name = path[len(PREFIX):-len(SUFFIX)]
        return name if is_collection_name(name) else None

    def _body(self, environ: dict) -> bytes | None:
        """The body, read when its length is given and within the limit (None: left unread)."""
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= self.max_bytes:
            return None
        return environ["wsgi.input"].read(int(length))

    def _plain(self, environ: dict, raw: bytes, name: str) -> dict | None:
        """The loaded body of a request the lane may answer; None to hand it on."""
        if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != JSON_TYPE:
            return None
        if auth.plain_principal(self.app, environ.get("HTTP_AUTHORIZATION", ""), environ.get("HTTP_HOST"),
                                environ.get("REMOTE_ADDR") or "unknown", name, self.role) is None:
            return None
        try:
            value = jsonbody.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            return None
        if jsonbody.lone_surrogate_in(raw, value):
            return None
        return self.body(value)


def init_app(app: Flask) -> None:
    """Put the lane in front of the app's WSGI callable (after every blueprint is registered)."""
    lane = SearchLane(app, app.wsgi_app)
    app.extensions["swapline_search_lane"] = lane
    app.wsgi_app = lane  # type: ignore[method-assign]

"""Search."""

from __future__ import annotations

import redis
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from shared.search.engine import DEFAULT_MODE
from shared.search.service import SearchRequest, nothing_served, search_version
from shared.sources.staleness import mark_stale
from webapp.api.auth import hidden_collection, requires
from webapp.api.routes.common import (
    RETRY_AFTER,
    VERSION_HEADERS,
    read_version,
    version_headers,
)
from webapp.api.runtime import swapline
from webapp.api.schemas.common import ErrorSchema
from webapp.api.schemas.search import SearchQuerySchema, SearchResultSchema, search_body

DEGRADED_HEADER = "X-Swapline-Degraded"

blp = Blueprint("search", __name__, url_prefix="/v1/collections", description="Vector, keyword and hybrid search")


def redis_down(name: str) -> tuple[bool, str | None]:
    """Whether Redis is unreachable (then a collection this process serves is searched from memory), and
    the collection's default search mode (None: the service's default); 404 for a collection that does not
    exist, 503 when Redis is down and this process serves none.

    Read from what this process knows of its collections (`webapp.api.catalog`, kept by the index watcher):
    no Redis command, except one bounded look-up of a name the process does not know yet."""
    rt = swapline.runtime
    catalog = rt.watcher.catalog
    if not rt.watcher.redis_down.is_set():
        try:
            exists, default_mode = catalog.get(name)
            if not exists:
                hidden_collection(name)  # the same answer a key limited to other collections gets
            return False, default_mode
        except redis.RedisError:
            rt.watcher.redis_down.set()
    if rt.live.get(name) is None:
        raise redis.ConnectionError("Redis is unavailable and this process serves no version of the collection")
    return True, catalog.known(name)[1]


@blp.route("/<string:name>/search")
class Search(MethodView):
    @requires("read")  # a POST, but it only reads
    @blp.arguments(SearchQuerySchema())
    @blp.response(200, SearchResultSchema, headers={**VERSION_HEADERS, "Server-Timing": {
        "description": "where the server's time went, in ms: `embed` (the query's embedding), `search` "
                       "(the index, the hits, the answer's shape) and `app` (the whole request in the "
                       "application, on every answer)", "schema": {"type": "string"}}})
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection, or `version` is not a kept "
                                                           "version (`kept_versions` lists those that are)")
    @blp.alt_response(409, schema=ErrorSchema,
                      description="The index was built with another model (vector and hybrid), or it has no "
                                  "keyword index yet (keyword; a rebuild adds one)")
    @blp.alt_response(503, schema=ErrorSchema, headers=RETRY_AFTER,
                      description="Redis is unreachable and this process serves no version of the collection "
                                  "(or `version` is not the served one), or the asked `version` is still being "
                                  "opened; retry after Retry-After seconds")
    def post(self, body, name):
        """Search the version this process serves, or the kept `version` asked for; never waits for a
        build, nor longer than a bounded wait for an asked version to open.

        While Redis is unreachable, a collection this process serves is still searched, from memory, and
        the answer carries `X-Swapline-Degraded: redis-unavailable` (only submissions, job status and
        events need Redis)."""
        data, headers = answer(name, body)
        # Written directly: the schema describes this answer in the OpenAPI document (webapp.api.schemas.search).
        return current_app.response_class(data, mimetype="application/json"), 200, headers


def answer(name: str, body: dict) -> tuple[bytes, dict[str, str]]:
    """A 200 search answer's JSON and headers (beyond Content-Type), for a body as SearchQuerySchema loads
    it: the view above and the fast lane (webapp.api.searchlane) both answer with it. A refusal raises
    (an HTTPException, or RequestRefused: 422 past a bound or for a bad filter, 409 when the index
    cannot answer), for the one handler in webapp.api.errors."""
    rt = swapline.runtime
    degraded, default_mode = redis_down(name)
    body = {**body, "mode": body.get("mode") or default_mode or DEFAULT_MODE}
    wanted = SearchRequest.from_body(body, rt.settings)
    # One reference: a swap after this line does not affect this query. A pinned version has its
    # own result cache, so its answers never come back for the served version's.
    served = read_version(name, body.get("version"))
    if served is None:
        found = nothing_served(wanted)
    else:
        found = search_version(served.version, served.cache, wanted, rt.svc.embedder)
    headers = {"X-Index-Version": "" if found.version is None else str(found.version),
               "X-Cache": "hit" if found.cached else "miss", "Server-Timing": found.server_timing(),
               **version_headers(found.version)}
    if degraded:
        headers[DEGRADED_HEADER] = "redis-unavailable"
    # Whether source files changed since indexed is checked now, never cached: on copies.
    marked = None if degraded else mark_stale(rt.svc.sources, rt.settings, name, found.result["hits"])
    result = found.result if marked is None else {**found.result, "hits": marked}
    return search_body(result), headers

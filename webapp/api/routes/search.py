"""Search."""

from __future__ import annotations

import json

import redis
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from shared.index.embedders import same_vector_space
from shared.search.engine import KeywordUnavailable, search
from shared.search.filters import FilterError, parse_filter
from webapp.api.auth import requires
from webapp.api.routes.common import require_collection
from webapp.api.runtime import swapline
from webapp.api.schemas.common import ErrorSchema
from webapp.api.schemas.search import SearchQuerySchema, SearchResultSchema

DEGRADED_HEADER = "X-Swapline-Degraded"

blp = Blueprint("search", __name__, url_prefix="/v1/collections", description="Vector, keyword and hybrid search")


@blp.route("/<string:name>/search")
class Search(MethodView):
    @requires("read")  # a POST, but it only reads
    @blp.arguments(SearchQuerySchema)
    @blp.response(200, SearchResultSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    @blp.alt_response(409, schema=ErrorSchema,
                      description="The index was built with another model (vector and hybrid), or it has no "
                                  "keyword index yet (keyword; a rebuild adds one)")
    @blp.alt_response(503, schema=ErrorSchema, description="Redis is unreachable and this process serves no "
                                                           "version of the collection")
    def post(self, body, name):
        """Search the version this process serves; never waits for a build or a load.

        While Redis is unreachable, a collection this process serves is still searched, from memory, and
        the answer carries `X-Swapline-Degraded: redis-unavailable` (only submissions, job status and
        events need Redis)."""
        rt = swapline.runtime
        degraded = rt.watcher.redis_down.is_set()
        if not degraded:
            try:
                require_collection(name)
            except redis.RedisError:
                rt.watcher.redis_down.set()
                degraded = True
        if degraded and rt.live.get(name) is None:
            raise redis.ConnectionError("Redis is unavailable and this process serves no version of the collection")
        extra = {DEGRADED_HEADER: "redis-unavailable"} if degraded else {}
        settings = rt.settings
        if body["k"] > settings.max_k:
            abort(422, message=f"k must be at most {settings.max_k}", errors={"k": [f"at most {settings.max_k}"]})
        if len(body["query"]) > settings.max_query_chars:
            abort(422, message=f"query must be at most {settings.max_query_chars} characters",
                  errors={"query": [f"at most {settings.max_query_chars} characters"]})
        try:
            flt = parse_filter(body.get("filter"))
        except FilterError as bad:
            abort(422, message=str(bad), errors={"filter": bad.errors})
        mode = body["mode"]
        served = rt.live.get(name)  # one reference: a swap after this line does not affect this query
        if served is None:
            return ({"index_version": None, "mode": mode, "scanned": 0, "matched_documents": None, "hits": []},
                    200, {"X-Index-Version": "", "X-Cache": "miss", **extra})
        live = served.version
        key = (body["query"], body["k"], mode, json.dumps(body.get("filter"), sort_keys=True))
        cached = served.cache.get(key)
        if cached is not None:
            return cached, 200, {"X-Index-Version": str(live.version), "X-Cache": "hit", **extra}
        embedder = rt.svc.embedder
        # Runtimes of one model (torch, ONNX fp32/int8) embed into one space, so a version built by one
        # answers queries embedded by another (tests/bench/embed.py measures hits@5 across them).
        if mode != "keyword" and not same_vector_space(live.manifest["model"], embedder.model_id):
            abort(409, code="model_mismatch",
                  message=f"index v{live.version} was built with {live.manifest['model']}; "
                          f"this API embeds queries with {embedder.model_id}")
        try:
            answer = search(live, body["query"], body["k"], mode, flt, lambda text: embedder.embed([text])[0])
        except KeywordUnavailable as missing:
            abort(409, code="keyword_index_missing", message=str(missing))
        result = {"index_version": live.version, "mode": answer.mode, "scanned": answer.scanned,
                  "matched_documents": answer.matched_documents, "hits": answer.hits}
        served.cache.put(key, result)
        return result, 200, {"X-Index-Version": str(live.version), "X-Cache": "miss", **extra}

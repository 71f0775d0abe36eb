"""Search."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint, abort

from webapp.api.auth import requires
from webapp.api.routes.common import require_collection
from webapp.api.runtime import swapline
from webapp.api.schemas import ErrorSchema, SearchQuerySchema, SearchResultSchema

blp = Blueprint("search", __name__, url_prefix="/v1/collections", description="Semantic search")


@blp.route("/<string:name>/search")
class Search(MethodView):
    @requires("read")  # a POST, but it only reads
    @blp.arguments(SearchQuerySchema)
    @blp.response(200, SearchResultSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    @blp.alt_response(409, schema=ErrorSchema, description="The index was built with another model")
    def post(self, body, name):
        """Search the version this process serves; never waits for a build or a load."""
        require_collection(name)
        rt = swapline.runtime
        settings = rt.settings
        if body["k"] > settings.max_k:
            abort(422, message=f"k must be at most {settings.max_k}", errors={"k": [f"at most {settings.max_k}"]})
        if len(body["query"]) > settings.max_query_chars:
            abort(422, message=f"query must be at most {settings.max_query_chars} characters",
                  errors={"query": [f"at most {settings.max_query_chars} characters"]})
        served = rt.live.get(name)  # one reference: a swap after this line does not affect this query
        if served is None:
            return {"index_version": None, "hits": []}, 200, {"X-Index-Version": "", "X-Cache": "miss"}
        live = served.version
        key = (body["query"], body["k"])
        cached = served.cache.get(key)
        if cached is not None:
            return cached, 200, {"X-Index-Version": str(live.version), "X-Cache": "hit"}
        embedder = rt.svc.embedder
        if live.manifest["model"] != embedder.model_id:
            abort(409, code="model_mismatch",
                  message=f"index v{live.version} was built with {live.manifest['model']}; "
                          f"this API embeds queries with {embedder.model_id}")
        query = embedder.embed([body["query"]])[0]
        hits = [{"doc_id": h.record["doc_id"], "chunk_id": h.record["chunk_id"], "score": h.score,
                 "text": h.record["text"], "heading_path": h.record.get("heading_path", []),
                 "metadata": h.record.get("metadata", {}),
                 **({"lines": h.record["lines"]} if "lines" in h.record else {})}
                for h in live.search(query, body["k"])]
        result = {"index_version": live.version, "hits": hits}
        served.cache.put(key, result)
        return result, 200, {"X-Index-Version": str(live.version), "X-Cache": "miss"}

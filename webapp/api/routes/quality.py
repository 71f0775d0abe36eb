"""Quality: a collection's canary queries (the gate every rebuild passes before it publishes) and
evaluation runs of labelled queries in every search mode."""

from __future__ import annotations

import time

from flask.views import MethodView
from flask_smorest import Blueprint, abort

from shared.jobs.evaluation import submit_eval
from shared.jobs.fromdisk import save_config
from shared.jobstates import iso_time
from shared.limits import check_queries
from webapp.api.errors import QUEUE_FULL
from webapp.api.idempotency import idempotent
from webapp.api.routes.common import job_location, require_collection
from webapp.api.runtime import swapline
from webapp.api.schemas.common import ErrorSchema
from webapp.api.schemas.jobs import JobSchema
from webapp.api.schemas.quality import CanariesSchema, CanariesViewSchema, EvalRequestSchema

blp = Blueprint("quality", __name__, url_prefix="/v1/collections",
                description="Quality: canary queries gating each publish, evaluation of search modes")

LOCATION = {"Location": {"description": "/v1/jobs/{id} of the job", "schema": {"type": "string"}}}


def canaries_view(config: dict) -> dict:
    return {**config, "updated_at": iso_time(config.get("updated_at"))}


def _canaries(name: str) -> dict:
    config = swapline.runtime.svc.quality.canaries(name)
    if config is None:
        abort(404, code="canaries_not_found", message=f"collection {name!r} has no canaries")
    return config


@blp.route("/<string:name>/canaries")
class Canaries(MethodView):
    @blp.doc(operationId="getCanaries")
    @blp.response(200, CanariesViewSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection, or it has no canaries")
    def get(self, name):
        """The collection's canary queries and `max_drop`."""
        require_collection(name)
        return canaries_view(_canaries(name))

    @blp.doc(operationId="setCanaries")
    @blp.arguments(CanariesSchema())
    @blp.response(200, CanariesViewSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    def put(self, body, name):
        """Set the canaries (replacing any): every rebuild searches them on its new version and on the
        published one before it publishes, and is refused (job failed with the per-canary report, the
        pointer unchanged) when the new version misses more than the published one plus `max_drop`.
        A canary hits when a document whose id equals `expect` or starts with it is in its top `k`."""
        require_collection(name)
        svc = swapline.runtime.svc
        check_queries(body["canaries"], "canaries", swapline.runtime.settings)  # RequestRefused: 422
        config = {"canaries": body["canaries"], "max_drop": body["max_drop"], "updated_at": time.time()}
        svc.quality.set_canaries(name, config)
        save_config(svc, name)
        return canaries_view(config)

    @blp.doc(operationId="deleteCanaries")
    @blp.response(204)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection, or it has no canaries")
    def delete(self, name):
        """Remove the canaries (and the last evaluation): rebuilds then keep only the shrink guard."""
        require_collection(name)
        svc = swapline.runtime.svc
        _canaries(name)
        svc.quality.clear_canaries(name)
        save_config(svc, name)
        return None


@blp.route("/<string:name>/eval")
class Evaluate(MethodView):
    @idempotent
    @blp.doc(operationId="evaluateCollection")
    @blp.arguments(EvalRequestSchema())
    @blp.response(202, JobSchema, headers=LOCATION, description=(
        "The `eval` job. Its result: `version` (the published version searched), `queries`, `k` and, per "
        "mode (vector, keyword, hybrid), `hits_at_k`, `hits`, `mrr` and `ndcg_at_10`."))
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    @blp.alt_response(503, **QUEUE_FULL)
    def post(self, body, name):
        """Evaluate the published version with labelled queries (`expect`: the relevant document ids or
        path prefixes) in every search mode, to choose the collection's `default_mode` on evidence."""
        require_collection(name)
        rt = swapline.runtime
        check_queries(body["queries"], "queries", rt.settings, k=body["k"])  # RequestRefused: 422
        job = submit_eval(rt.svc, name, body["queries"], body["k"], bounded=True)
        return job, 202, job_location(job["id"])

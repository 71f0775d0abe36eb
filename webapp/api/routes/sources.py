"""Sources: folders a collection follows, their reconciles and their removal."""

from __future__ import annotations

from flask import jsonify
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from shared.jobstates import QUEUED, RUNNING, iso_time
from shared.names import is_job_id
from shared.sources.dryrun import BUSY_RETRY_AFTER, DryRunBusy, dry_run
from shared.sources.paths import SourcePathRefused
from shared.sources.plan import PlanTooCostly
from shared.sources.submit import (
    SourceConflict,
    add_source,
    remove_source,
    submit_reconcile,
)
from webapp.api.auth import requires
from webapp.api.errors import QUEUE_FULL
from webapp.api.idempotency import idempotent
from webapp.api.routes.common import job_location, require_collection
from webapp.api.runtime import swapline
from webapp.api.schemas.common import ErrorSchema
from webapp.api.schemas.jobs import JobSchema
from webapp.api.schemas.sources import (
    DryRunSchema,
    ReconcileSchema,
    SourceCreatedSchema,
    SourceCreateSchema,
    SourceListSchema,
    SourceSchema,
)

blp = Blueprint("sources", __name__, url_prefix="/v1/collections",
                description="Sources: folders a collection follows (reconcile, watch)")

LOCATION = {"Location": {"description": "/v1/jobs/{id} of the job", "schema": {"type": "string"}}}


def source_view(source: dict) -> dict:
    svc = swapline.runtime.svc
    last = source.get("last_reconcile")
    if last:
        last = {**last, "finished_at": iso_time(last.get("finished_at"))}
    holder = svc.sources.reconcile_holder(source["id"])
    return {**source, "created_at": iso_time(source["created_at"]), "last_reconcile": last,
            "files": svc.sources.file_count(source["id"]),
            "reconcile_job_id": holder if holder and svc.jobs.state(holder) in (QUEUED, RUNNING) else None,
            "watched_by": svc.sources.watch_holder(source["id"]) if source["watch"] else None}


def load_source(name: str, source_id: str) -> dict:
    require_collection(name)
    source = swapline.runtime.svc.sources.get(source_id) if is_job_id(source_id) else None
    if source is None or source["collection"] != name:
        abort(404, message=f"collection {name!r} has no source {source_id!r}")
    return source


@blp.route("/<string:name>/sources")
class Sources(MethodView):
    @blp.response(200, SourceListSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    def get(self, name):
        """The folders the collection follows, each with its last reconcile."""
        require_collection(name)
        return {"sources": [source_view(s) for s in swapline.runtime.svc.sources.of_collection(name)]}

    @requires("admin")  # a source reads the server's own folders: more than a write key may ask for
    @idempotent
    @blp.arguments(SourceCreateSchema())
    @blp.response(202, SourceCreatedSchema, headers=LOCATION)
    @blp.alt_response(403, schema=ErrorSchema,
                      description="Sources are off (SWAPLINE_SOURCE_ROOTS is empty), or the path resolves "
                                  "outside every root; nothing was read")
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    @blp.alt_response(409, schema=ErrorSchema, description="The collection already follows this folder, or "
                                                           "another source uses the same prefix")
    @blp.alt_response(422, schema=ErrorSchema, description="The path does not exist or is not a folder")
    @blp.alt_response(503, **QUEUE_FULL)
    def post(self, body, name):
        """Follow a folder: answers at once with the source and its first reconcile job, which walks the
        folder, fans the files out over the ingest workers and ends with one rebuild."""
        require_collection(name)
        try:
            source, job = add_source(swapline.runtime.svc, name, body["path"], body["include"], body["exclude"],
                                     body["watch"], body["prefix"])
        except SourcePathRefused as refused:
            abort(refused.status, code=refused.code, message=refused.message)
        except SourceConflict as conflict:
            abort(409, code="source_conflict", message=conflict.message, source_id=conflict.source_id)
        return {"source": source_view(source), "job": job}, 202, job_location(job["id"])


@blp.route("/<string:name>/sources/<string:source_id>")
class Source(MethodView):
    @blp.response(200, SourceSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection or source")
    def get(self, name, source_id):
        """One source."""
        return source_view(load_source(name, source_id))

    @idempotent
    @blp.response(202, JobSchema, headers=LOCATION, description="The job that stops the source's reconcile, "
                  "removes its documents (then one rebuild) and forgets the source. Watching stops at once.")
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection or source")
    @blp.alt_response(503, **QUEUE_FULL)
    def delete(self, name, source_id):
        """Stop following a folder and remove its documents."""
        job = remove_source(swapline.runtime.svc, load_source(name, source_id), bounded=True)
        return job, 202, job_location(job["id"])


@blp.route("/<string:name>/sources/<string:source_id>/reconcile")
class Reconcile(MethodView):
    @idempotent
    @blp.arguments(ReconcileSchema())
    @blp.response(202, JobSchema, headers=LOCATION)
    @blp.alt_response(200, schema=DryRunSchema, description="`dry_run`: what a reconcile would do now; nothing "
                                                            "was changed and no job was made")
    @blp.alt_response(403, schema=ErrorSchema, description="`dry_run`: the folder is no longer inside "
                                                           "SWAPLINE_SOURCE_ROOTS")
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection or source")
    @blp.alt_response(409, schema=ErrorSchema, description="A reconcile of this source is queued or running "
                      "(`job_id` names it); or a dry run went past its bound (`dry_run_too_costly`)")
    @blp.alt_response(429, schema=ErrorSchema, description="`dry_run`: another dry run is running in this API "
                      "process (`dry_run_busy`); retry after Retry-After seconds")
    @blp.alt_response(503, **QUEUE_FULL)
    def post(self, body, name, source_id):
        """Reconcile the collection with the folder now: new and changed files are ingested, removed
        ones tombstoned, then one rebuild. An unchanged folder costs a walk (a git work tree: a few git
        calls) and nothing more. With `dry_run`, answers 200 with the `plan` instead and changes nothing."""
        source = load_source(name, source_id)
        if body["dry_run"]:
            try:
                plan = dry_run(swapline.runtime.svc, source)
            except SourcePathRefused as refused:
                abort(refused.status, code=refused.code, message=refused.message)
            except DryRunBusy as busy:
                abort(429, code="dry_run_busy", message=f"{busy}; retry shortly",
                      headers={"Retry-After": str(BUSY_RETRY_AFTER)})
            except PlanTooCostly as costly:
                abort(409, code="dry_run_too_costly", message=f"{costly}; run the reconcile itself, whose "
                                                              "result has the same counts")
            # A Response passes the 202 schema by: this answer is the plan.
            return jsonify(DryRunSchema().dump({"source": source["id"], "plan": plan})), 200
        job = submit_reconcile(swapline.runtime.svc, source, bounded=True)  # JobInProgress: 409 (webapp.api.errors)
        return job, 202, job_location(job["id"])

"""Sources: folders a collection follows, their reconciles and their removal."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint, abort

from shared.jobstates import QUEUED, RUNNING, iso_time
from shared.names import is_job_id
from shared.sources.paths import SourcePathRefused
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
from webapp.api.schemas.sources import SourceCreatedSchema, SourceCreateSchema, SourceListSchema, SourceSchema

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
    @blp.arguments(SourceCreateSchema)
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
    @blp.response(202, JobSchema, headers=LOCATION)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection or source")
    @blp.alt_response(409, schema=ErrorSchema, description="A reconcile of this source is queued or running; "
                                                           "`job_id` names it")
    @blp.alt_response(503, **QUEUE_FULL)
    def post(self, name, source_id):
        """Reconcile the collection with the folder now: new and changed files are ingested, removed
        ones tombstoned, then one rebuild. An unchanged folder costs a walk and nothing more."""
        source = load_source(name, source_id)
        job = submit_reconcile(swapline.runtime.svc, source, bounded=True)  # JobInProgress: 409 (webapp.api.errors)
        return job, 202, job_location(job["id"])

"""Collections and the documents in them."""

from __future__ import annotations

from flask import jsonify
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from shared import cursors
from shared.jobs.fromdisk import save_config
from shared.jobs.status import collection_status, list_collections
from shared.jobs.submit import drop_in_progress, submit_delete, submit_documents, submit_drop
from shared.jobstates import iso_time
from shared.limits import check_documents
from webapp.api.auth import require_grant, scope_filtered, visible_collections
from webapp.api.errors import QUEUE_FULL
from webapp.api.idempotency import idempotent
from webapp.api.routes.common import (
    RETRY_AFTER,
    VERSION_HEADERS,
    bad_cursor,
    job_location,
    read_version,
    require_collection,
    start_rebuild,
    version_headers,
)
from webapp.api.routes.snapshots import restore_from_snapshot
from webapp.api.runtime import swapline
from webapp.api.schemas.collections import (
    CollectionCreateSchema,
    CollectionListSchema,
    CollectionPatchSchema,
    CollectionSchema,
    CollectionStatusSchema,
    RebuildQuerySchema,
)
from webapp.api.schemas.common import ErrorSchema, PageQuerySchema
from webapp.api.schemas.documents import (
    DocumentBatchSchema,
    DocumentDetailSchema,
    DocumentListQuerySchema,
    DocumentListSchema,
    DocumentQuerySchema,
)
from webapp.api.schemas.jobs import JobSchema

blp = Blueprint("collections", __name__, url_prefix="/v1/collections", description="Collections and documents")

LOCATION = {"Location": {"description": "/v1/jobs/{id} of the job", "schema": {"type": "string"}}}


def collection_view(name: str) -> dict:
    """The collection's status with times as ISO 8601; each response schema picks its fields."""
    status = collection_status(swapline.runtime.svc, name)
    if status["index"]:
        status["index"]["built_at"] = iso_time(status["index"]["built_at"])
    return status


def after_cursor(args: dict) -> str | None:
    """The item the request's `cursor` names, or a 422."""
    if not args.get("cursor"):
        return None
    try:
        return cursors.decode(args["cursor"], str)[0]
    except ValueError:
        bad_cursor()


def listing_version(args: dict) -> tuple[int | None, str | None, bool]:
    """The version a documents page reads, the id it starts after, and whether the cursor named that
    version: a cursor carries the version its listing started on (one from before versions were in
    cursors carries only the id: the served version); 422 for a cursor that is not ours or that
    contradicts `version`."""
    if not args.get("cursor"):
        return args.get("version"), None, False
    try:
        version, after = cursors.decode(args["cursor"], int, str)
    except ValueError:
        return args.get("version"), after_cursor(args), False
    if args.get("version") not in (None, version):
        abort(422, message=f"the cursor continues a listing of version {version}, not {args['version']}",
              errors={"version": [f"the cursor continues version {version}"]})
    return version, after, True


def document_summary(entry: dict) -> dict:
    return {"id": entry["id"], "type": entry["type"], "source": entry.get("source"), "path": entry.get("path"),
            "chunks": entry["chunks"], "updated_at": iso_time(entry.get("updated_at"))}


@blp.route("")
class Collections(MethodView):
    @scope_filtered
    @blp.arguments(PageQuerySchema(), location="query")
    @blp.response(200, CollectionListSchema)
    def get(self, args):
        """Collections by name, with document and chunk counts, the published index version and the
        version this API process serves; page with `cursor`."""
        rt = swapline.runtime
        items, next_cursor = list_collections(rt.svc, after_cursor(args), args["limit"], rt.live.served(),
                                              visible_collections())
        return {"collections": items, "next_cursor": next_cursor}

    @scope_filtered
    @blp.arguments(CollectionCreateSchema())
    @blp.response(201, CollectionSchema)
    @blp.alt_response(202, schema=JobSchema, headers=LOCATION,
                      description="With `from_snapshot`: the `restore` job that creates the collection")
    @blp.alt_response(404, schema=ErrorSchema, description="`from_snapshot` names no kept snapshot")
    @blp.alt_response(409, schema=ErrorSchema, description="A collection with that name exists")
    @blp.alt_response(503, **QUEUE_FULL)
    def post(self, body):
        """Create a collection (a key limited to some collections may create only those); with
        `from_snapshot`, restore one of a collection's snapshots as this new collection (admin)."""
        if body.get("from_snapshot"):
            job = restore_from_snapshot(body["name"], body["from_snapshot"])
            # A Response passes the 201 schema by: this answer is the job (JobSchema).
            return jsonify(JobSchema().dump(job)), 202, job_location(job["id"])
        require_grant(body["name"], "write", hidden=None)
        dropping = drop_in_progress(swapline.runtime.svc, body["name"])
        if dropping:
            abort(409, message=f"collection {body['name']!r} is being dropped; create it again once the drop "
                               "has finished", code="collection_dropping", job_id=dropping,
                  headers=job_location(dropping))
        if not swapline.runtime.svc.collections.create(body["name"], body.get("default_mode")):
            abort(409, message=f"collection {body['name']!r} already exists", code="collection_exists")
        # This process's searches know it at once; the others from the announcement (webapp.api.catalog).
        swapline.runtime.watcher.catalog.update(body["name"], True, body.get("default_mode"))
        if body.get("default_mode"):
            save_config(swapline.runtime.svc, body["name"])
        return collection_view(body["name"]), 201, {"Location": f"/v1/collections/{body['name']}"}


@blp.route("/<string:name>")
class Collection(MethodView):
    @blp.response(200, CollectionStatusSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    def get(self, name):
        """A collection's status: counts, the index version it serves, drift since that build, the
        running job with its ETA, the rebuild lock, and the version each API process serves."""
        require_collection(name)
        return collection_view(name)

    @blp.arguments(CollectionPatchSchema())
    @blp.response(200, CollectionStatusSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    def patch(self, body, name):
        """Change the collection's settings: `default_mode`, the mode of searches that name none (null:
        the service's default, hybrid)."""
        require_collection(name)
        svc = swapline.runtime.svc
        svc.collections.set_default_mode(name, body["default_mode"])
        swapline.runtime.watcher.catalog.update(name, True, body["default_mode"] or None)
        save_config(svc, name)
        return collection_view(name)

    @idempotent
    @blp.response(202, JobSchema, headers=LOCATION,
                  description="The drop job. Once it ran, the collection, its documents, segments and index "
                              "versions are gone, and every API process answers 404 for it.")
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    @blp.alt_response(409, schema=ErrorSchema,
                      description="A drop of this collection is already queued or running")
    @blp.alt_response(503, **QUEUE_FULL)
    def delete(self, name):
        """Drop the collection (a `drop` job on the index queue). Its queued jobs are canceled and
        running ones stop first."""
        require_collection(name)
        job = submit_drop(swapline.runtime.svc, name, bounded=True)  # JobInProgress: 409 (webapp.api.errors)
        return job, 202, job_location(job["id"])


@blp.route("/<string:name>/documents")
class Documents(MethodView):
    @blp.arguments(DocumentListQuerySchema(), location="query")
    @blp.response(200, DocumentListSchema, headers=VERSION_HEADERS)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection, or `version` is not a kept "
                                                           "version (`kept_versions` lists those that are)")
    @blp.alt_response(410, schema=ErrorSchema, description="The version the cursor's listing started on is no "
                                                           "longer kept: list again without a cursor")
    @blp.alt_response(503, schema=ErrorSchema, headers=RETRY_AFTER,
                      description="The version asked for is still being opened (retry after Retry-After seconds)")
    def get(self, args, name):
        """The documents of the index version this process serves (or of the kept `version` asked for),
        by id: type, source, path, chunk count and when each was written; `prefix` keeps ids that start
        with it; page with `cursor`. A cursor stays on the version its listing started on, so paging
        across a swap neither skips nor repeats a document."""
        require_collection(name)
        version, after, from_cursor = listing_version(args)
        served = read_version(name, version, from_cursor)
        if served is None:
            return {"index_version": None, "documents": [], "next_cursor": None}
        listed = served.version.version
        page, more = served.version.documents.page(args["prefix"], after, args["limit"])
        return ({"index_version": listed, "documents": [document_summary(e) for e in page],
                 "next_cursor": cursors.encode(listed, page[-1]["id"]) if more else None},
                200, version_headers(listed))

    @idempotent
    @blp.doc(operationId="addDocuments")  # a batch that adds or replaces, not one document created
    @blp.arguments(DocumentBatchSchema())
    @blp.response(202, JobSchema, headers=LOCATION)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    @blp.alt_response(413, schema=ErrorSchema,
                      description="Too many documents, a document too large, or a body over "
                                  "SWAPLINE_MAX_REQUEST_BYTES")
    @blp.alt_response(503, **QUEUE_FULL)
    @blp.alt_response(507, schema=ErrorSchema, description="The data volume has no room to stage the batch; "
                                                           "nothing was created. Retry after Retry-After seconds.")
    def post(self, body, name):
        """Add or replace documents (a document id submitted again replaces it). Answers the ingest
        job; with `rebuild` (the default) a rebuild follows and the job's result names it."""
        require_collection(name)
        check_documents(body["documents"], swapline.runtime.settings)  # RequestRefused: webapp.api.errors
        job = submit_documents(swapline.runtime.svc, name, body["documents"], body["rebuild"], bounded=True)
        return job, 202, job_location(job["id"])


@blp.route("/<string:name>/documents/<path:doc_id>")
class Document(MethodView):
    @blp.arguments(DocumentQuerySchema(), location="query")
    @blp.response(200, DocumentDetailSchema, headers=VERSION_HEADERS)
    @blp.alt_response(404, schema=ErrorSchema,
                      description="No such collection, no such document in the version read, or `version` is "
                                  "not a kept version (`kept_versions` lists those that are)")
    @blp.alt_response(503, schema=ErrorSchema, headers=RETRY_AFTER,
                      description="The version asked for is still being opened (retry after Retry-After seconds)")
    def get(self, args, name, doc_id):
        """One document as stored in the index version this process serves (or in the kept `version`
        asked for): its metadata and its chunks in order."""
        require_collection(name)
        served = read_version(name, args.get("version"))
        entry = served.version.documents.get(doc_id) if served is not None else None
        if served is None or entry is None:
            which = "the served index" if args.get("version") is None else f"version {args['version']}"
            abort(404, code="document_not_found", message=f"document {doc_id!r} is not in {which} of {name!r}")
        chunks = [{"chunk_id": r["chunk_id"], "text": r["text"], "heading_path": r.get("heading_path", [])}
                  for r in served.version.records(entry["rows"])]
        return ({**document_summary(entry), "index_version": served.version.version,
                 "metadata": entry.get("metadata") or {}, "chunk_records": chunks},
                200, version_headers(served.version.version))

    @idempotent
    @blp.response(202, JobSchema, headers=LOCATION,
                  description="The delete job: it writes a tombstone for the document, then a rebuild "
                              "follows (its id is in the job's result). Deleting an absent id is not an "
                              "error; the result says how many documents were deleted.")
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    @blp.alt_response(503, **QUEUE_FULL)
    def delete(self, name, doc_id):
        """Delete a document (a `delete` job on the ingest queue)."""
        require_collection(name)
        job = submit_delete(swapline.runtime.svc, name, [doc_id], bounded=True)
        return job, 202, job_location(job["id"])


@blp.route("/<string:name>/rebuild")
class Rebuild(MethodView):
    @idempotent
    @blp.arguments(RebuildQuerySchema(), location="query")
    @blp.response(202, JobSchema, headers=LOCATION)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    @blp.alt_response(409, schema=ErrorSchema, description="A rebuild is already queued or running")
    @blp.alt_response(503, **QUEUE_FULL)
    def post(self, args, name):
        """Rebuild the collection's index from its documents. Before it publishes, the new version passes
        the quality gate (the canaries, and the shrink guard: less than half the documents, or none); with
        `force=true` it is published whatever the gate says (how a deliberate delete-all is published)."""
        job = start_rebuild(name, force=args["force"])
        return job, 202, job_location(job["id"])

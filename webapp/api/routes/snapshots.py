"""Snapshots of a collection: take one, list them, download one, restore an uploaded one."""

from __future__ import annotations

from flask import request, send_file
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from shared.jobs.snapshots import (
    list_snapshots,
    snapshot_info,
    submit_restore_from,
    submit_restore_upload,
    submit_snapshot,
)
from shared.names import is_collection_name, is_snapshot_id
from webapp.api.auth import require_grant, requires
from webapp.api.errors import QUEUE_FULL
from webapp.api.idempotency import idempotent
from webapp.api.routes.common import job_location, require_collection
from webapp.api.runtime import swapline
from webapp.api.schemas.common import ErrorSchema
from webapp.api.schemas.jobs import JobSchema
from webapp.api.schemas.snapshots import SnapshotListSchema

blp = Blueprint("snapshots", __name__, url_prefix="/v1/collections",
                description="Snapshots: one checksummed archive of a collection, restored as a new one")

LOCATION = {"Location": {"description": "/v1/jobs/{id} of the job", "schema": {"type": "string"}}}
TAR = "application/x-tar"
UPLOAD_TYPES = (TAR, "application/octet-stream")  # the second for clients that know no tar type


def restore_from_snapshot(name: str, source: dict) -> dict:
    """The restore job of POST /v1/collections with `from_snapshot` (admin on both collections)."""
    require_grant(name, "admin", hidden=None)
    unknown = f"collection {source['collection']!r} has no snapshot {source['id']!r}"
    require_grant(source["collection"], "admin", hidden=unknown)
    return submit_restore_from(swapline.runtime.svc, name, source["collection"], source["id"], bounded=True)


@blp.route("/<string:name>/snapshots")
class Snapshots(MethodView):
    @blp.response(200, SnapshotListSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    def get(self, name):
        """The collection's snapshots, oldest first."""
        require_collection(name)
        return {"snapshots": list_snapshots(swapline.runtime.svc, name)}

    @requires("admin")
    @idempotent
    @blp.response(202, JobSchema, headers=LOCATION, description="The `snapshot` job; its result names the "
                  "snapshot (id, version, bytes, sha256)")
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection")
    @blp.alt_response(409, schema=ErrorSchema, description="The collection has no published version yet")
    @blp.alt_response(503, **QUEUE_FULL)
    def post(self, name):
        """Take a snapshot: one archive of the served version, the parts it uses and the segments, so a
        restored collection goes on with incremental builds. Written aside, fsynced, then renamed."""
        require_collection(name)
        job = submit_snapshot(swapline.runtime.svc, name, bounded=True)
        return job, 202, job_location(job["id"])


@blp.route("/<string:name>/snapshots/<string:snapshot_id>/download")
class Download(MethodView):
    @requires("admin")  # the whole collection, with the folders its sources follow
    @blp.doc(responses={"200": {  # flask-smorest documents a content only with a schema: written out here
        "description": "The archive (application/x-tar); X-Swapline-SHA256 is its sha256",
        "headers": {"X-Swapline-SHA256": {"description": "sha256 of the archive", "schema": {"type": "string"}}},
        "content": {TAR: {"schema": {"type": "string", "format": "binary"}}}}})
    @blp.response(200, description="The archive (application/x-tar); X-Swapline-SHA256 is its sha256",
                  content_type=TAR,
                  headers={"X-Swapline-SHA256": {"description": "sha256 of the archive", "schema": {"type": "string"}}})
    @blp.alt_response(404, schema=ErrorSchema, description="No such collection or snapshot")
    def get(self, name, snapshot_id):
        """Download a snapshot's archive."""
        require_collection(name)
        svc = swapline.runtime.svc
        facts = snapshot_info(svc, name, snapshot_id) if is_snapshot_id(snapshot_id) else None
        if facts is None:
            abort(404, code="snapshot_not_found", message=f"collection {name!r} has no snapshot {snapshot_id!r}")
        path = svc.storage.snapshot_path(name, snapshot_id)  # the id matched its pattern above
        response = send_file(path, mimetype=TAR, as_attachment=True, download_name=f"{name}-{snapshot_id}.tar",
                             conditional=False, etag=False)
        response.headers["X-Swapline-SHA256"] = facts["sha256"]
        return response


@blp.route("/<string:name>/restore")
class Restore(MethodView):
    @requires("admin")
    @blp.doc(requestBody={"required": True, "description": "a snapshot archive as downloaded, at most "
                          "SWAPLINE_MAX_SNAPSHOT_BYTES, with a Content-Length",
                          "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in UPLOAD_TYPES}})
    @blp.response(202, JobSchema, headers=LOCATION, description="The `restore` job: it checks every member of "
                  "the archive before anything is visible; a damaged archive fails it and leaves nothing")
    @blp.alt_response(409, schema=ErrorSchema, description="A collection of that name exists (or its folders)")
    @blp.alt_response(411, schema=ErrorSchema, description="The body has no Content-Length")
    @blp.alt_response(413, schema=ErrorSchema, description="The body is larger than SWAPLINE_MAX_SNAPSHOT_BYTES")
    @blp.alt_response(415, schema=ErrorSchema, description="The body is not application/x-tar (or octet-stream)")
    @blp.alt_response(422, schema=ErrorSchema, description="Not a collection name")
    @blp.alt_response(503, **QUEUE_FULL)
    def post(self, name):
        """Create collection `name` from an uploaded snapshot archive."""
        if not is_collection_name(name):
            abort(422, code="invalid", message=f"{name!r} is not a collection name")
        if request.mimetype not in UPLOAD_TYPES:
            abort(415, code="unsupported_media_type", message=f"send the archive as {TAR}")
        limit = swapline.runtime.settings.max_snapshot_bytes
        length = request.content_length
        if length is None:
            abort(411, code="length_required", message="send the archive with a Content-Length")
        if length > limit:
            abort(413, code="too_large", message=f"the archive exceeds {limit} bytes (SWAPLINE_MAX_SNAPSHOT_BYTES)")
        request.max_content_length = limit  # this route's bound instead of SWAPLINE_MAX_REQUEST_BYTES
        try:
            job = submit_restore_upload(swapline.runtime.svc, name, request.stream, length, bounded=True)
        except ValueError as exc:  # the body ended early
            abort(400, code="bad_request", message=str(exc))
        return job, 202, job_location(job["id"])

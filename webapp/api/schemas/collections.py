"""Collections: creation, the listing and a collection's status."""

from __future__ import annotations

from marshmallow import Schema, fields

from webapp.api.schemas.common import StrictSchema, collection_name, next_cursor_field
from webapp.api.schemas.jobs import JobSchema
from webapp.api.schemas.snapshots import FromSnapshotSchema


class CollectionCreateSchema(StrictSchema):
    name = collection_name(required=True)
    from_snapshot = fields.Nested(FromSnapshotSchema, metadata={
        "description": "create it from a kept snapshot (admin): answers 202 with a `restore` job instead of 201"})


class IndexInfoSchema(Schema):
    version = fields.Integer()
    vectors = fields.Integer()
    built_at = fields.String()
    kind = fields.String()
    model = fields.String()
    dim = fields.Integer()


class CollectionSchema(Schema):
    name = fields.String(required=True)
    documents = fields.Integer()
    chunks = fields.Integer()
    index = fields.Nested(IndexInfoSchema, allow_none=True)


class StatusIndexSchema(IndexInfoSchema):
    by_type = fields.Dict(keys=fields.String(), values=fields.Dict(keys=fields.String(), values=fields.Integer()),
                          metadata={"description": "documents and chunks in the served index by document type "
                                                   "(metadata.type, else the extension of metadata.source or the id)"})


class RunningJobSchema(JobSchema):
    progress = fields.Dict(metadata={"description": "stage, done, total, rate (items/s) and eta_seconds"})


class LockSchema(Schema):
    job_id = fields.String()
    fence = fields.Integer()
    expires_in_ms = fields.Integer()
    since = fields.String(allow_none=True)


class CollectionStatusSchema(CollectionSchema):
    index = fields.Nested(StatusIndexSchema, allow_none=True)
    last_rebuild_at = fields.Float(allow_none=True, metadata={"description": "epoch seconds of the last publish"})
    documents_at_rebuild = fields.Integer(allow_none=True)
    drift = fields.Integer(metadata={"description": "documents changed since the served index was built"})
    running_job = fields.Nested(RunningJobSchema, allow_none=True)
    pending_rebuild = fields.String(allow_none=True)
    lock = fields.Nested(LockSchema, allow_none=True)
    replicas = fields.Dict(keys=fields.String(), values=fields.Integer(allow_none=True),
                           metadata={"description": "API process id -> version it serves"})
    converged = fields.Boolean(metadata={"description": "every live API process serves the published version"})
    load_failures = fields.List(fields.Dict(), metadata={
        "description": "versions API processes could not load (damaged or unreadable files): replica, version, "
                       "error, attempts, since. Each keeps serving what it served and retries with backoff."})


class CollectionSummarySchema(CollectionSchema):
    served_version = fields.Integer(allow_none=True, metadata={
        "description": "the index version this API process serves (null: none loaded yet)"})


class CollectionListSchema(Schema):
    collections = fields.List(fields.Nested(CollectionSummarySchema), required=True,
                              metadata={"description": "by name"})
    next_cursor = next_cursor_field()

"""Collections: creation, the listing and a collection's status."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from shared.search.engine import DEFAULT_MODE, MODES
from webapp.api.schemas.common import StrictSchema, collection_name, next_cursor_field
from webapp.api.schemas.jobs import JobSchema
from webapp.api.schemas.quality import QualityReportSchema
from webapp.api.schemas.snapshots import FromSnapshotSchema

DEFAULT_MODE_DOC = (f"the search mode used when a search names none (one of {', '.join(MODES)}; null: "
                    f"{DEFAULT_MODE}); choose it with `swapline eval`")


class CollectionCreateSchema(StrictSchema):
    name = collection_name(required=True)
    default_mode = fields.String(allow_none=True, validate=validate.OneOf(MODES), metadata={
        "description": DEFAULT_MODE_DOC})
    from_snapshot = fields.Nested(FromSnapshotSchema, metadata={
        "description": "create it from a kept snapshot (admin): answers 202 with a `restore` job instead of 201"})


class CollectionPatchSchema(StrictSchema):
    default_mode = fields.String(required=True, allow_none=True, validate=validate.OneOf(MODES), metadata={
        "description": DEFAULT_MODE_DOC})


class RebuildQuerySchema(StrictSchema):
    force = fields.Boolean(load_default=False, metadata={
        "description": "publish even when the quality gate refuses the new version (its canaries miss more "
                       "than allowed, or it holds less than half the documents of the published one)"})


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
    default_mode = fields.String(metadata={"description": "the mode of searches that name none"})


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
    quality = fields.Nested(QualityReportSchema, allow_none=True, metadata={
        "description": "the last quality-gate evaluation of a rebuild (canaries, shrink guard); null: none yet"})


class CollectionSummarySchema(CollectionSchema):
    served_version = fields.Integer(allow_none=True, metadata={
        "description": "the index version this API process serves (null: none loaded yet)"})


class CollectionListSchema(Schema):
    collections = fields.List(fields.Nested(CollectionSummarySchema), required=True,
                              metadata={"description": "by name"})
    next_cursor = next_cursor_field()

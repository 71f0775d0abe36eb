"""Jobs: one job, its progress, the listing."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from shared.jobkinds import KINDS
from shared.jobstates import STATES
from webapp.api.schemas.common import StrictSchema, collection_name, next_cursor_field


class ProgressSchema(Schema):
    stage = fields.String()
    done = fields.Integer()
    total = fields.Integer()
    counts = fields.Dict(metadata={"description": "a reconcile's running sums of its children's counts"})


class JobSchema(Schema):
    id = fields.String(required=True)
    kind = fields.String(required=True)
    collection = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(STATES))
    progress: fields.Field = fields.Nested(ProgressSchema)  # a subclass may answer it as a plain Dict
    error = fields.String(allow_none=True)
    created_at = fields.String(allow_none=True)
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    result = fields.Dict(allow_none=True)
    cancel_requested = fields.Boolean(metadata={
        "description": "cancel was requested while the job ran; it stops at its next step boundary"})
    attempts = fields.Integer(metadata={
        "description": "how many times a worker started the job (more than 1 after a worker was lost or a "
                       "transient error; at most SWAPLINE_JOB_MAX_ATTEMPTS lost runs before it fails)"})
    retryable = fields.Boolean(metadata={
        "description": "the job failed for a transient reason (e.g. the data volume was full): making the "
                       "same request again can succeed"})


class JobListQuerySchema(StrictSchema):
    collection = collection_name(metadata={"description": "only jobs of this collection"})
    state = fields.String(validate=validate.OneOf(STATES))
    kind = fields.String(validate=validate.OneOf(list(KINDS)))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=validate.Length(min=1, max=200),
                           metadata={"description": "next_cursor of the previous page"})


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True, metadata={"description": "newest first"})
    next_cursor = next_cursor_field()

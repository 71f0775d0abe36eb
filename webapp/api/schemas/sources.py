"""Sources: folders a collection follows, and their reconciles."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from webapp.api.schemas.common import StrictSchema
from webapp.api.schemas.jobs import JobSchema


class SourceCreateSchema(StrictSchema):
    path = fields.String(required=True, validate=validate.Length(min=1, max=4096), metadata={
        "description": "a folder inside SWAPLINE_SOURCE_ROOTS (absolute, or relative to its first root); "
                       "symlinks are resolved before the check"})
    include = fields.List(fields.String(validate=validate.Length(min=1, max=256)), load_default=list,
                          validate=validate.Length(max=100), metadata={
                              "description": "gitignore-style globs of files to take (default: common text "
                                             "and code extensions)"})
    # A field named like Schema's own `exclude` (the fields to leave out), which marshmallow allows: it
    # collects declared fields when the class is made. Only the static types clash.
    exclude = fields.List(fields.String(validate=validate.Length(min=1, max=256)), load_default=list,  # type: ignore[assignment]
                          validate=validate.Length(max=100),
                          metadata={"description": "gitignore-style globs of files and folders to leave out"})
    watch = fields.Boolean(load_default=False, metadata={
        "description": "follow changes: the watcher reconciles changed paths by itself"})
    prefix = fields.String(load_default="", validate=validate.Length(max=128), metadata={
        "description": "put before each document id (the path relative to the folder); needed when a "
                       "collection follows several folders"})


class LastReconcileSchema(Schema):
    job_id = fields.String()
    state = fields.String()
    finished_at = fields.String(allow_none=True)
    files_seen = fields.Integer()
    files_added = fields.Integer()
    files_changed = fields.Integer()
    files_removed = fields.Integer()
    files_skipped = fields.Integer()
    chunks_embedded = fields.Integer()
    chunks_reused = fields.Integer()


class SourceSchema(Schema):
    id = fields.String(required=True)
    collection = fields.String()
    path = fields.String(metadata={"description": "the resolved folder"})
    include = fields.List(fields.String())
    exclude = fields.List(fields.String())  # type: ignore[assignment]  # as in SourceCreateSchema
    prefix = fields.String()
    watch = fields.Boolean()
    created_at = fields.String(allow_none=True)
    files = fields.Integer(metadata={"description": "files of the folder the collection holds"})
    reconcile_job_id = fields.String(allow_none=True, metadata={"description": "the reconcile queued or running"})
    watched_by = fields.String(allow_none=True, metadata={"description": "the watcher process holding the lease"})
    last_reconcile = fields.Nested(LastReconcileSchema, allow_none=True)


class SourceListSchema(Schema):
    sources = fields.List(fields.Nested(SourceSchema), required=True)


class SourceCreatedSchema(Schema):
    source = fields.Nested(SourceSchema, required=True)
    job = fields.Nested(JobSchema, required=True, metadata={"description": "the first reconcile"})

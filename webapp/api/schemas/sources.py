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
    walk = fields.String(metadata={"description": "`tree` (a walk), `git` (what git named) or `paths` (a watcher's)"})
    git_commit = fields.String(allow_none=True, metadata={"description": "HEAD of the folder's git work tree "
                                                                        "when the reconcile planned"})


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
    git_commit = fields.String(allow_none=True, metadata={
        "description": "a git work tree: the commit the last complete reconcile indexed (the next one asks git "
                       "what changed since)"})


class SourceListSchema(Schema):
    sources = fields.List(fields.Nested(SourceSchema), required=True)


class SourceCreatedSchema(Schema):
    source = fields.Nested(SourceSchema, required=True)
    job = fields.Nested(JobSchema, required=True, metadata={"description": "the first reconcile"})


class ReconcileSchema(StrictSchema):
    dry_run = fields.Boolean(load_default=False, metadata={
        "description": "answer 200 with what a reconcile would do now (`plan`), changing nothing"})


class PlanSchema(Schema):
    walk = fields.String(required=True, metadata={"description": "`tree` or `git`: how the changes were found"})
    git_commit = fields.String(allow_none=True, metadata={"description": "HEAD of the folder's git work tree"})
    git_fallback = fields.String(metadata={"description": "a git work tree that was walked: why"})
    files_seen = fields.Integer()
    files_examined = fields.Integer(metadata={"description": "files compared (a git plan: those git named)"})
    files_added = fields.Integer(required=True)
    files_changed = fields.Integer(required=True)
    files_removed = fields.Integer(required=True)
    files_skipped = fields.Integer(required=True)
    files_unchanged = fields.Integer()
    chunks_total = fields.Integer(metadata={
        "description": "distinct chunk texts (content hashes) of the new and changed files: a text repeated in "
                       "several chunks counts once; chunks_to_embed + chunks_cached"})
    chunks_to_embed = fields.Integer(required=True, metadata={
        "description": "of chunks_total, the distinct chunk texts the embedding cache does not hold"})
    chunks_cached = fields.Integer(required=True, metadata={
        "description": "of chunks_total, the distinct chunk texts whose vector the embedding cache holds"})
    eta_seconds = fields.Float(required=True, metadata={"description": "chunks_to_embed / embed_rate"})
    embed_rate = fields.Float(metadata={"description": "chunks per second"})
    embed_rate_source = fields.String(metadata={
        "description": "`measured` (the workers' embedding so far) or `declared` (before any was measured)"})
    seconds = fields.Float(metadata={"description": "time the dry run took"})


class DryRunSchema(Schema):
    source = fields.String(required=True)
    plan = fields.Nested(PlanSchema, required=True)

"""Marshmallow schemas for every body, query and response of the v1 API."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from shared.jobs.model import STATES
from shared.names import COLLECTION_NAME_PATTERN, COLLECTION_NAME_RULE, openapi_pattern
from shared.tasknames import KINDS

# The pattern the OpenAPI document shows; `collection_name` checks the stricter \Z form itself.
COLLECTION_NAME_DOC = openapi_pattern(COLLECTION_NAME_PATTERN)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE  # unknown body fields are a 422, not silently dropped


class ErrorSchema(Schema):
    code = fields.String(required=True, metadata={"description": "machine-readable error code"})
    message = fields.String(required=True)
    errors = fields.Dict(metadata={"description": "per-field validation messages"})
    job_id = fields.String(metadata={"description": "the job in the way (409 on rebuild, drop or reconcile)"})
    source_id = fields.String(metadata={"description": "the source in the way (409 source_conflict)"})
    queue = fields.String(metadata={"description": "the full queue (503 queue_full)"})


def collection_name(**kw) -> fields.String:
    """A collection name field, validated with the one pattern in `shared.names`."""
    # marshmallow formats the error message: the pattern's braces are doubled to stay literal.
    shown = COLLECTION_NAME_DOC.replace("{", "{{").replace("}", "}}")
    return fields.String(validate=validate.Regexp(
        COLLECTION_NAME_PATTERN, error=f"must match {shown}: {COLLECTION_NAME_RULE}"),
        metadata={**kw.pop("metadata", {}), "pattern": COLLECTION_NAME_DOC}, **kw)


class CollectionCreateSchema(StrictSchema):
    name = collection_name(required=True)


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


class DocumentSchema(StrictSchema):
    id = fields.String(required=True, validate=validate.Length(min=1, max=256),
                       metadata={"description": "the document's id; submitting an id again replaces it"})
    text = fields.String(required=True, metadata={
        "description": "markdown or plain text; at most SWAPLINE_MAX_DOCUMENT_BYTES bytes of UTF-8 "
                       "(default 1 MiB), else 413"})
    metadata = fields.Dict(keys=fields.String(), load_default=dict)


class DocumentBatchSchema(StrictSchema):
    documents = fields.List(fields.Nested(DocumentSchema), required=True, validate=validate.Length(min=1),
                            metadata={"description": "at most SWAPLINE_MAX_DOCUMENTS_PER_BATCH documents "
                                                     "(default 1000), else 413; ids unique in the batch"})
    rebuild = fields.Boolean(load_default=True)


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
    progress = fields.Nested(ProgressSchema)
    error = fields.String(allow_none=True)
    created_at = fields.String(allow_none=True)
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    result = fields.Dict(allow_none=True)
    cancel_requested = fields.Boolean(metadata={
        "description": "cancel was requested while the job ran; it stops at its next step boundary"})


class JobListQuerySchema(StrictSchema):
    collection = collection_name(metadata={"description": "only jobs of this collection"})
    state = fields.String(validate=validate.OneOf(STATES))
    kind = fields.String(validate=validate.OneOf(list(KINDS)))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=validate.Length(min=1, max=200),
                           metadata={"description": "next_cursor of the previous page"})


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True, metadata={"description": "newest first"})
    next_cursor = fields.String(required=True, allow_none=True, metadata={
        "description": "pass as `cursor` for the next page; null on the last page"})


class SearchQuerySchema(StrictSchema):
    query = fields.String(required=True, validate=validate.Length(min=1), metadata={
        "description": "at most SWAPLINE_MAX_QUERY_CHARS characters (default 2000), else 422"})
    k = fields.Integer(load_default=10, validate=validate.Range(min=1), metadata={
        "description": "hits to return; at most SWAPLINE_MAX_K (default 100), else 422"})


class HitSchema(Schema):
    doc_id = fields.String()
    chunk_id = fields.String()
    score = fields.Float()
    text = fields.String()
    heading_path = fields.List(fields.String(), metadata={
        "description": "headings around the chunk (markdown), or its symbol path (code)"})
    metadata = fields.Dict()
    lines = fields.List(fields.Integer(), metadata={"description": "first and last line of a code chunk"})


class SearchResultSchema(Schema):
    index_version = fields.Integer(allow_none=True)
    hits = fields.List(fields.Nested(HitSchema))


class HealthSchema(Schema):
    status = fields.String()
    checks = fields.Dict()


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


class VersionSchema(Schema):
    version = fields.Integer()
    vectors = fields.Integer(allow_none=True)
    documents = fields.Integer(allow_none=True)
    model = fields.String(allow_none=True)
    kind = fields.String(allow_none=True)
    built_at = fields.Float(allow_none=True)
    published_at = fields.Float(allow_none=True)
    current = fields.Boolean()
    on_disk = fields.Boolean()
    served_by = fields.Integer()


class VersionListSchema(Schema):
    versions = fields.List(fields.Nested(VersionSchema))


class RollbackSchema(StrictSchema):
    version = fields.Integer(required=True, validate=validate.Range(min=1))


class SourceCreateSchema(StrictSchema):
    path = fields.String(required=True, validate=validate.Length(min=1, max=4096), metadata={
        "description": "a folder inside SWAPLINE_SOURCE_ROOTS (absolute, or relative to its first root); "
                       "symlinks are resolved before the check"})
    include = fields.List(fields.String(validate=validate.Length(min=1, max=256)), load_default=list,
                          validate=validate.Length(max=100), metadata={
                              "description": "gitignore-style globs of files to take (default: common text "
                                             "and code extensions)"})
    exclude = fields.List(fields.String(validate=validate.Length(min=1, max=256)), load_default=list,
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
    exclude = fields.List(fields.String())
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

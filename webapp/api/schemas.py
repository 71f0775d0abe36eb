"""Marshmallow schemas for every body, query and response of the v1 API."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from shared.jobkinds import KINDS
from shared.jobstates import STATES
from shared.names import COLLECTION_NAME_PATTERN, COLLECTION_NAME_RULE, openapi_pattern
from shared.search.engine import DEFAULT_MODE, HYBRID_DEPTH, MODES
from shared.store.webhooks import DELIVERY_STATES
from shared.webhooks.delivery import EVENTS as WEBHOOK_EVENTS

# The pattern the OpenAPI document shows; `collection_name` checks the stricter \Z form itself.
COLLECTION_NAME_DOC = openapi_pattern(COLLECTION_NAME_PATTERN)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE  # unknown body fields are a 422, not silently dropped


class ErrorSchema(Schema):
    """An RFC 9457 problem document (application/problem+json) with Swapline's members."""

    class Meta:
        ordered = True

    type = fields.String(required=True, metadata={
        "description": "the problem type, `urn:swapline:problem:` followed by `code`"})
    title = fields.String(required=True, metadata={"description": "the HTTP status phrase"})
    status = fields.Integer(required=True, metadata={"description": "the HTTP status code"})
    detail = fields.String(required=True, metadata={"description": "what went wrong, for a person"})
    code = fields.String(required=True, metadata={"description": "machine-readable error code"})
    message = fields.String(required=True, metadata={"description": "the same text as `detail`"})
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


def next_cursor_field() -> fields.String:
    return fields.String(required=True, allow_none=True, metadata={
        "description": "pass as `cursor` for the next page; null on the last page"})


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


FILTER_DOC = (
    "Only chunks of documents that match every entry (AND). Entries: "
    "`\"metadata.KEY\": VALUE` (metadata[KEY] equals VALUE; when the metadata value is a list, any "
    "element may equal), `\"metadata.KEY\": {\"in\": [V, ...]}` (equals one of them), `\"type\"` "
    "(metadata.type, else the extension of metadata.path, metadata.source or the id) and `\"source\"` "
    "(metadata.source) with the same two forms, and `\"path_prefix\": \"P\"` (metadata.path, else the "
    "document id, starts with P). VALUE is a string, number, boolean or null. An unknown key or "
    "operator is a 422. Example: `{\"type\": \"note\", \"metadata.tags\": {\"in\": [\"a\", \"b\"]}}`.")


class SearchQuerySchema(StrictSchema):
    query = fields.String(required=True, validate=validate.Length(min=1), metadata={
        "description": "at most SWAPLINE_MAX_QUERY_CHARS characters (default 2000), else 422"})
    k = fields.Integer(load_default=10, strict=True, validate=validate.Range(min=1), metadata={
        "description": "hits to return; at most SWAPLINE_MAX_K (default 100), else 422"})
    mode = fields.String(load_default=DEFAULT_MODE, validate=validate.OneOf(MODES), metadata={
        "description": "vector: nearest chunks by meaning (FAISS); keyword: BM25 over the words of the "
                       "chunks (exact identifiers, numbers, error strings); hybrid: both, each to "
                       f"max(k, {HYBRID_DEPTH}) candidates, fused by reciprocal rank fusion"})
    filter = fields.Dict(keys=fields.String(), allow_none=True, metadata={"description": FILTER_DOC})


class HitSchema(Schema):
    doc_id = fields.String()
    chunk_id = fields.String()
    score = fields.Float(metadata={"description": "cosine similarity (vector), BM25 score (keyword) or the "
                                                  "reciprocal-rank-fusion score (hybrid)"})
    text = fields.String()
    heading_path = fields.List(fields.String(), metadata={
        "description": "headings around the chunk (markdown), or its symbol path (code)"})
    metadata = fields.Dict()
    vector_rank = fields.Integer(allow_none=True, metadata={
        "description": "1-based rank among the vector candidates; null when vector search did not "
                       "return this chunk (or did not run)"})
    keyword_rank = fields.Integer(allow_none=True, metadata={
        "description": "1-based rank among the keyword candidates; null when no query word occurs in "
                       "the chunk (or keyword search did not run)"})
    vector_score = fields.Float(allow_none=True)
    keyword_score = fields.Float(allow_none=True)
    lines = fields.List(fields.Integer(), metadata={"description": "first and last line of a code chunk"})


class SearchResultSchema(Schema):
    index_version = fields.Integer(allow_none=True)
    mode = fields.String(validate=validate.OneOf(MODES), metadata={
        "description": "the mode that answered: hybrid over an index built before keyword indexes "
                       "existed answers as vector"})
    scanned = fields.Integer(metadata={
        "description": "candidate chunks considered: the chunks the filter admits (all chunks without a "
                       "filter); each one is a candidate, so a selective filter still gets its top k"})
    matched_documents = fields.Integer(allow_none=True, metadata={
        "description": "documents the filter admits; null without a filter"})
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
    load_failures = fields.List(fields.Dict(), metadata={
        "description": "versions API processes could not load (damaged or unreadable files): replica, version, "
                       "error, attempts, since. Each keeps serving what it served and retries with backoff."})


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
    version = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


class PageQuerySchema(StrictSchema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=validate.Length(min=1, max=1400),
                           metadata={"description": "next_cursor of the previous page"})


class CollectionSummarySchema(CollectionSchema):
    served_version = fields.Integer(allow_none=True, metadata={
        "description": "the index version this API process serves (null: none loaded yet)"})


class CollectionListSchema(Schema):
    collections = fields.List(fields.Nested(CollectionSummarySchema), required=True,
                              metadata={"description": "by name"})
    next_cursor = next_cursor_field()


class DocumentListQuerySchema(PageQuerySchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    prefix = fields.String(load_default="", validate=validate.Length(max=256),
                           metadata={"description": "only document ids that start with this"})


class DocumentSummarySchema(Schema):
    id = fields.String(required=True)
    type = fields.String(metadata={"description": "metadata.type, else the extension of metadata.path, "
                                                  "metadata.source or the id"})
    source = fields.String(allow_none=True, metadata={"description": "metadata.source"})
    path = fields.String(allow_none=True, metadata={"description": "metadata.path"})
    chunks = fields.Integer()
    updated_at = fields.String(allow_none=True, metadata={"description": "when this version of the document "
                                                                         "was written (ingested)"})


class DocumentListSchema(Schema):
    index_version = fields.Integer(allow_none=True, metadata={
        "description": "the served version listed (documents ingested since appear after the next "
                       "rebuild); null when this process serves no index of the collection yet"})
    documents = fields.List(fields.Nested(DocumentSummarySchema), required=True, metadata={"description": "by id"})
    next_cursor = next_cursor_field()


class ChunkSchema(Schema):
    chunk_id = fields.String()
    text = fields.String()
    heading_path = fields.List(fields.String())


class DocumentDetailSchema(DocumentSummarySchema):
    index_version = fields.Integer(metadata={"description": "the served version read"})
    metadata = fields.Dict()
    chunk_records = fields.List(fields.Nested(ChunkSchema), metadata={
        "description": "the document's chunks as stored in the served version, in order"})


class WebhookCreateSchema(StrictSchema):
    url = fields.String(required=True, validate=validate.Length(min=1, max=2048), metadata={
        "description": "an http(s) URL; its host must resolve to public addresses only (checked now and at "
                       "every delivery) unless SWAPLINE_WEBHOOK_ALLOW_PRIVATE=1"})
    events = fields.List(fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)), required=True,
                         validate=validate.Length(min=1, max=len(WEBHOOK_EVENTS)))
    collection = collection_name(allow_none=True, load_default=None,
                                 metadata={"description": "only events of this collection (default: all)"})


class WebhookSchema(Schema):
    id = fields.String(required=True)
    url = fields.String(required=True)
    events = fields.List(fields.String(), required=True)
    collection = fields.String(allow_none=True)
    created_at = fields.String(allow_none=True)


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(required=True, metadata={
        "description": "the signing secret, shown this once: each delivery carries "
                       "X-Swapline-Signature, the hex HMAC-SHA256 of the raw body with this secret"})


class WebhookListSchema(Schema):
    webhooks = fields.List(fields.Nested(WebhookSchema), required=True)


class DeliveryAttemptSchema(Schema):
    at = fields.String(allow_none=True)
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    seconds = fields.Float()


class DeliverySchema(Schema):
    id = fields.String(required=True, metadata={"description": "also sent as X-Swapline-Delivery"})
    event = fields.Dict(metadata={"description": "the event, as GET /v1/events shows it"})
    state = fields.String(validate=validate.OneOf(DELIVERY_STATES), metadata={
        "description": "pending (waiting for an attempt or a retry), delivered (a 2xx answer) or failed "
                       "(SWAPLINE_WEBHOOK_MAX_ATTEMPTS attempts, or a refused target)"})
    attempts = fields.Integer()
    created_at = fields.String(allow_none=True)
    last_attempt_at = fields.String(allow_none=True)
    next_attempt_at = fields.String(allow_none=True)
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    history = fields.List(fields.Nested(DeliveryAttemptSchema), metadata={"description": "attempts, oldest first"})


class DeliveryListQuerySchema(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=100))


class DeliveryListSchema(Schema):
    deliveries = fields.List(fields.Nested(DeliverySchema), required=True, metadata={"description": "newest first"})


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

"""Documents of a collection: the batch posted, the listing of the served (or an asked, kept) version,
one document with its chunks."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from webapp.api.schemas.common import PageQuerySchema, StrictSchema, next_cursor_field, version_field


class DocumentSchema(StrictSchema):
    id = fields.String(required=True, validate=validate.Length(min=1, max=256),
                       metadata={"description": "the document's id; submitting an id again replaces it"})
    text = fields.String(required=True, metadata={
        "description": "markdown or plain text; at most SWAPLINE_MAX_DOCUMENT_BYTES bytes of UTF-8 "
                       "(default 1 MiB), else 413"})
    metadata = fields.Dict(keys=fields.String(), load_default=dict, metadata={
        "description": "copied into every chunk; at most SWAPLINE_MAX_METADATA_BYTES bytes as JSON "
                       "(default 16 KiB), else 422 metadata_too_large"})


class DocumentBatchSchema(StrictSchema):
    documents = fields.List(fields.Nested(DocumentSchema), required=True, validate=validate.Length(min=1),
                            metadata={"description": "at most SWAPLINE_MAX_DOCUMENTS_PER_BATCH documents "
                                                     "(default 1000), else 413; ids unique in the batch"})
    rebuild = fields.Boolean(load_default=True)


class DocumentListQuerySchema(PageQuerySchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    prefix = fields.String(load_default="", validate=validate.Length(max=256),
                           metadata={"description": "only document ids that start with this"})
    version = version_field()


class DocumentQuerySchema(StrictSchema):
    version = version_field()


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
        "description": "the version listed: `version` when asked, the one the cursor's listing started on, "
                       "else the served one (documents ingested since appear after the next rebuild); null "
                       "when this process serves no index of the collection yet"})
    documents = fields.List(fields.Nested(DocumentSummarySchema), required=True, metadata={"description": "by id"})
    next_cursor = next_cursor_field()


class ChunkSchema(Schema):
    chunk_id = fields.String()
    text = fields.String()
    heading_path = fields.List(fields.String())


class DocumentDetailSchema(DocumentSummarySchema):
    index_version = fields.Integer(metadata={"description": "the version read: `version` when asked, else "
                                                            "the served one"})
    metadata = fields.Dict()
    chunk_records = fields.List(fields.Nested(ChunkSchema), metadata={
        "description": "the document's chunks as stored in the served version, in order"})

"""Search: the query (with the filter grammar) and the hits."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from shared.search.engine import DEFAULT_MODE, HYBRID_DEPTH, MODES
from webapp.api.schemas.common import StrictSchema

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
    mode = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(MODES), metadata={
        "description": f"default: the collection's `default_mode` ({DEFAULT_MODE} unless set). "
                       "vector: nearest chunks by meaning (FAISS); keyword: BM25 over the words of the "
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

"""Search: the query (with the filter grammar) and the hits."""

from __future__ import annotations

import json

import numpy as np
import orjson
from marshmallow import Schema, fields, validate

from shared.search.engine import DEFAULT_MODE, HYBRID_DEPTH, MODES
from shared.search.shaping import GROUP_BY, MAX_ANSWER_TOKENS, PASSAGES_PER_DOCUMENT
from webapp.api.schemas.common import StrictSchema, version_field

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
    version = version_field(strict=True)
    k = fields.Integer(load_default=10, strict=True, validate=validate.Range(min=1), metadata={
        "description": "hits to return; at most SWAPLINE_MAX_K (default 100), else 422"})
    mode = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(MODES), metadata={
        "description": f"default: the collection's `default_mode` ({DEFAULT_MODE} unless set). "
                       "vector: nearest chunks by meaning (FAISS); keyword: BM25 over the words of the "
                       "chunks (exact identifiers, numbers, error strings); hybrid: both, each to "
                       f"max(k, {HYBRID_DEPTH}) candidates, fused by reciprocal rank fusion"})
    filter = fields.Dict(keys=fields.String(), allow_none=True, metadata={"description": FILTER_DOC})
    group_by = fields.String(allow_none=True, validate=validate.OneOf(GROUP_BY), metadata={
        "description": "document: one result per document (at most k), its hits among the top candidates "
                       "merged into `passages` where their chunks are adjacent or overlapping (shared text "
                       f"kept once), with line ranges; at most {PASSAGES_PER_DOCUMENT} passages a document"})
    max_tokens = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1, max=MAX_ANSWER_TOKENS),
                                metadata={"description": "cut the answer's texts (hit or passage texts) to this "
                                                         "many model tokens in all, counted with the embedder's "
                                                         "tokenizer; the lowest-ranked content is dropped or cut "
                                                         "first, and the answer says `tokens` and `truncated`"})


class PassageSchema(Schema):
    text = fields.String()
    start_line = fields.Integer(allow_none=True, metadata={
        "description": "first line of the passage in its document (1-based; null for chunks stored before "
                       "chunks recorded their lines)"})
    end_line = fields.Integer(allow_none=True, metadata={"description": "last line of the passage"})
    score = fields.Float(metadata={"description": "the best score of the chunks merged into it"})
    heading_path = fields.List(fields.String(), metadata={"description": "headings around its first chunk"})
    chunk_ids = fields.List(fields.String(), metadata={"description": "the chunks merged into it, in order"})


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
    lines = fields.List(fields.Integer(), metadata={
        "description": "first and last line of the chunk in its document (1-based)"})
    passages = fields.List(fields.Nested(PassageSchema), metadata={
        "description": "with group_by document: the document's passages in document order (a result has "
                       "no chunk_id or text of its own)"})
    stale = fields.Boolean(allow_none=True, metadata={
        "description": "for documents of a source: whether the file changed on disk (size or mtime) or is "
                       "gone since it was indexed, checked when answering; absent for other documents, null "
                       "when the source folder cannot be reached"})


class SearchResultSchema(Schema):
    index_version = fields.Integer(allow_none=True, metadata={
        "description": "the version that answered (also in the Swapline-Version header): `version` when "
                       "asked, else the served one; null while this process serves none"})
    mode = fields.String(validate=validate.OneOf(MODES), metadata={
        "description": "the mode that answered: hybrid over an index built before keyword indexes "
                       "existed answers as vector"})
    scanned = fields.Integer(metadata={
        "description": "candidate chunks considered: the chunks the filter admits (all chunks without a "
                       "filter); each one is a candidate, so a selective filter still gets its top k"})
    matched_documents = fields.Integer(allow_none=True, metadata={
        "description": "documents the filter admits; null without a filter"})
    hits = fields.List(fields.Nested(HitSchema))
    group_by = fields.String(metadata={"description": "how hits were grouped (absent: one hit per chunk)"})
    tokens = fields.Integer(metadata={
        "description": "with max_tokens: model tokens the answer's texts hold (at most max_tokens)"})
    truncated = fields.Boolean(metadata={
        "description": "with max_tokens: whether content was cut or dropped to fit"})


# The search answer is written directly, not dumped field by field through the schemas above (which
# stay the OpenAPI description): the same keys, the same JSON, a fraction of the cost per hit
# (tests/test_search_path.py checks the two agree). orjson writes it (10 hits: 17 µs against 49 µs
# through the standard library's json on an AMD EPYC Zen 4); what orjson refuses is written by json.
_RESULT_FIELDS = tuple(SearchResultSchema._declared_fields)
_HIT_FIELDS = tuple(HitSchema._declared_fields)
_PASSAGE_FIELDS = tuple(PassageSchema._declared_fields)


def _plain(value):
    """JSON for what the engine may leave in a hit: numpy scalars and arrays."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _hit(hit: dict) -> dict:
    out = {name: hit[name] for name in _HIT_FIELDS if name in hit}
    if "passages" in out:
        out["passages"] = [{name: p[name] for name in _PASSAGE_FIELDS if name in p} for p in out["passages"]]
    return out


def search_body(result: dict) -> bytes:
    """The JSON of a search answer: what `SearchResultSchema().dump(result)` would give."""
    out = {name: result[name] for name in _RESULT_FIELDS if name in result}
    out["hits"] = [_hit(hit) for hit in result.get("hits", ())]
    try:
        return orjson.dumps(out, default=_plain)
    except orjson.JSONEncodeError:
        # An integer past 64 bits in a document's metadata (JSON has no such limit; a client may send one)
        # or a string orjson will not write: json writes both, and refuses what is not JSON at all.
        return json.dumps(out, default=_plain, separators=(",", ":")).encode()
